import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models.gan import Discriminator, Generator
from jaxgen.models.layers import (
    conv_transpose_4x4_s2,
    conv_transpose_4x4_s2_subpixel,
    subpixel_kernel,
)


def _loop_conv_transpose(x, k):
    """The textbook definition: every input pixel scatters kernel[t] to output 2i + 2 - t."""
    n, h, w, _ = x.shape
    y = np.zeros((n, 2 * h, 2 * w, k.shape[-1]))
    for i in range(h):
        for j in range(w):
            for t in range(4):
                for s in range(4):
                    o, p = 2 * i + 2 - t, 2 * j + 2 - s
                    if 0 <= o < 2 * h and 0 <= p < 2 * w:
                        y[:, o, p] += x[:, i, j] @ k[t, s]
    return y


def test_generator_and_discriminator_shapes():
    z = jnp.zeros((3, 62))
    g_vars = Generator().init(jax.random.PRNGKey(0), z, train=False)
    images = Generator().apply(g_vars, z, train=False)
    assert images.shape == (3, 28, 28, 1)
    d_vars = Discriminator().init(jax.random.PRNGKey(1), images, train=False)
    assert Discriminator().apply(d_vars, images, train=False).shape == (3,)
    kernel_shapes = {k: v["kernel"].shape for k, v in g_vars["params"].items() if "kernel" in v}
    assert kernel_shapes == {"Dense_0": (62, 1024), "Dense_1": (1024, 6272),
                             "ConvTranspose4x4Up_0": (4, 4, 128, 64),
                             "ConvTranspose4x4Up_1": (4, 4, 64, 1)}


def test_width_scales_every_hidden_layer_and_keeps_images_and_logits():
    """GANConfig.width 0.25: each hidden layer's channels and units a quarter of the
    reference's, z in and the image and logits out as they were (EBGAN's code too)."""
    from jaxgen.models.gan import EnergyDiscriminator

    z, x, key = jnp.zeros((3, 62)), jnp.zeros((3, 28, 28, 1)), jax.random.PRNGKey(0)
    shapes = {}
    for name, net, inputs in (("g", Generator(width=0.25), z), ("d", Discriminator(width=0.25), x),
                              ("e", EnergyDiscriminator(width=0.25), x)):
        variables = jax.eval_shape(lambda v, n=net: n.init(key, v, train=False), inputs)
        shapes[name] = {k: v["kernel"].shape for k, v in variables["params"].items()
                        if "kernel" in v}
        out = jax.eval_shape(lambda v, i, n=net: n.apply(v, i, train=False), variables, inputs)
        shapes[name + "_out"] = [o.shape for o in jax.tree.leaves(out)]
    assert shapes["g"] == {"Dense_0": (62, 256), "Dense_1": (256, 7 * 7 * 32),
                           "ConvTranspose4x4Up_0": (4, 4, 32, 16),
                           "ConvTranspose4x4Up_1": (4, 4, 16, 1)}
    assert shapes["d"] == {"Conv_0": (4, 4, 1, 16), "Conv_1": (4, 4, 16, 32),
                           "Dense_0": (7 * 7 * 32, 256), "Dense_1": (256, 1)}
    assert shapes["e"]["Dense_0"] == (14 * 14 * 16, 32) and shapes["e"]["Dense_1"] == (
        32, 14 * 14 * 16)
    assert shapes["g_out"] == [(3, 28, 28, 1)] and shapes["d_out"] == [(3,)]
    assert sorted(shapes["e_out"]) == [(3, 28, 28, 1), (3, 32)]


def test_reference_initialisation_normal_002_and_zero_biases():
    g_vars = Generator().init(jax.random.PRNGKey(0), jnp.zeros((1, 62)), train=False)
    d_vars = Discriminator().init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
    for params in (g_vars["params"], d_vars["params"]):
        for name, layer in params.items():
            if name.startswith("BatchNorm"):
                assert np.all(layer["scale"] == 1) and np.all(layer["bias"] == 0)
                continue
            assert np.all(layer["bias"] == 0), name
            if layer["kernel"].size > 10_000:
                assert abs(float(layer["kernel"].std()) - 0.02) < 0.001, name
                assert abs(float(layer["kernel"].mean())) < 0.001, name


def test_conv_transpose_is_the_textbook_transposed_convolution():
    x = np.random.RandomState(0).randn(2, 7, 7, 5).astype(np.float32)
    k = np.random.RandomState(1).randn(4, 4, 5, 3).astype(np.float32)
    np.testing.assert_allclose(conv_transpose_4x4_s2(x, k), _loop_conv_transpose(x, k),
                               atol=1e-4)


def test_subpixel_form_equals_direct_form_forward_and_gradient():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 7, 7, 16))
    k = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 16, 8)) * 0.1
    np.testing.assert_allclose(conv_transpose_4x4_s2_subpixel(x, k), conv_transpose_4x4_s2(x, k),
                               atol=1e-5)
    def loss(f):
        return (lambda x, k: jnp.sum(jnp.sin(f(x, k))))
    g_sub = jax.grad(loss(conv_transpose_4x4_s2_subpixel), argnums=(0, 1))(x, k)
    g_dir = jax.grad(loss(conv_transpose_4x4_s2), argnums=(0, 1))(x, k)
    for a, b in zip(g_sub, g_dir):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_subpixel_kernel_uses_every_tap_once_and_zeros_elsewhere():
    k = jnp.arange(16.0).reshape(4, 4, 1, 1) + 1
    k3 = np.asarray(subpixel_kernel(k))  # (3, 3, 1, 4)
    for phase in range(4):
        taps = k3[..., phase].ravel()
        assert np.count_nonzero(taps) == 4  # each output phase reads 2x2 of the 16 taps
    assert sorted(k3[k3 != 0].tolist()) == list(range(1, 17))


def test_generator_forms_share_parameters_and_outputs():
    z = jax.random.uniform(jax.random.PRNGKey(0), (5, 62))
    variables = Generator(conv_forms="canonical").init(jax.random.PRNGKey(1), z, train=False)
    a = Generator(conv_forms="canonical").apply(variables, z, train=False)
    b = Generator(conv_forms="xla").apply(variables, z, train=False)
    np.testing.assert_allclose(a, b, atol=1e-5)
