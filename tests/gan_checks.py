"""Comparing two GAN models that should be the same computation up to float rounding.

A bias directly before a BatchNorm gets no gradient in exact arithmetic (the normalisation
removes it); its computed gradient is rounding noise, which Adam divides by its own magnitude
and turns into a step of up to +-lr. So parameters can only be compared to 2 lr per step,
while what the networks compute in training mode (BatchNorm on the batch) is blind to those
biases and is compared tightly: to 1e-3 on tanh outputs in [-1, 1] after one step, about four
times the largest difference seen between 1 and 8 devices (Adam's +-lr steps on weights whose
gradient is near zero move outputs by ~2e-4).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models.gan import Discriminator, Generator


BIASES_BEFORE_BATCHNORM = {
    "g": {"['Dense_0']['bias']", "['Dense_1']['bias']", "['ConvTranspose4x4Up_0']['bias']"},
    "d": {"['Conv_1']['bias']", "['Dense_0']['bias']"},
}


def assert_gan_models_close(a, b, *, steps: int, lr: float, images, z_dim: int = 62):
    for net in ("g", "d"):
        for part in ("params", "batch_stats"):
            leaves_a = jax.tree_util.tree_leaves_with_path(getattr(getattr(a, net), part))
            leaves_b = jax.tree.leaves(getattr(getattr(b, net), part))
            for (path, x), y in zip(leaves_a, leaves_b):
                name = jax.tree_util.keystr(path)
                diff = np.abs(np.asarray(x) - np.asarray(y))
                assert diff.max() <= 2 * lr * steps + 1e-4 * np.abs(y).max(), (net, name)
                if (steps > 1 or name in BIASES_BEFORE_BATCHNORM[net]
                        or name.endswith("['mean']")):
                    continue  # those biases, the running means that include them, and any
                    # model after several steps, over which rounding differences spread
                # After one step everything else moved the same way: all but a few elements
                # agree to lr / 10 (a missing or wrong update moves nearly all by ~lr).
                assert np.mean(diff > lr / 10) < 0.02, (net, name, np.mean(diff > lr / 10))
    z = jax.random.uniform(jax.random.PRNGKey(123), (images.shape[0], z_dim))
    g_out = [Generator().apply({"params": m.g.params, "batch_stats": m.g.batch_stats}, z,
                               train=True, mutable=["batch_stats"])[0] for m in (a, b)]
    np.testing.assert_allclose(g_out[0], g_out[1], atol=1e-3)
    d_out = [Discriminator().apply({"params": m.d.params, "batch_stats": m.d.batch_stats},
                                   jnp.asarray(images), train=True, mutable=["batch_stats"])[0]
             for m in (a, b)]
    np.testing.assert_allclose(d_out[0], d_out[1], rtol=1e-4, atol=1e-4)
