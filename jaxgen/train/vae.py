"""The variational autoencoder as a :class:`~jaxgen.train.task.Task`.

Objective, per image, in nats (Kingma & Welling 2014; Higgins et al. 2017 for the weight beta):

    loss = -(1/K sum_k log p(x | z_k)) + beta * KL(q(z|x) || N(0, I)),
    z_k = mu(x) + sigma(x) * eps_k,  eps_k ~ N(0, I)   (the reparameterisation)

beta = 1 is the negative ELBO; beta = 0 trains the reconstruction term alone. The KL is in closed
form. The likelihood is Bernoulli (decoder logits; images dynamically binarised, x ~ Bernoulli(pixel
intensity), afresh every step, as for "dynamically binarised MNIST") or Gaussian with a fixed std
``sigma`` on intensities in [0, 1]. The test-set evaluation is ``jaxgen.train.vae_eval``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxgen import losses, parallel
from jaxgen.config import NON_NEGATIVE, POSITIVE, POSITIVE_INT, POSITIVE_INTS, inherited, setting
from jaxgen.errors import JaxgenError
from jaxgen.keys import named_key
from jaxgen.models.vae import ACTIVATIONS, ARCHITECTURES, IMAGE_SHAPE, VAE
from jaxgen.train.task import Picture, Task, TrainConfig

LIKELIHOODS = ("bernoulli", "gaussian")
LR_SCHEDULES = ("constant", "burda")
SAMPLE_GRID = 64  # prior samples drawn after every epoch (an 8x8 grid)
DISPLAY_IMAGES = 32  # fixed test images shown beside their reconstructions


@dataclasses.dataclass(frozen=True)
class VAEConfig(TrainConfig):
    batch_size: int = inherited(TrainConfig, "batch_size", 100)
    latent_dim: int = setting(20, "latent size: 2 for pictures, 20-50 for quality",
                              POSITIVE_INT)
    likelihood: str = setting("bernoulli", "decoder: Bernoulli on dynamically binarised "
                              "images, or Gaussian of fixed std --sigma on intensities in [0, 1]",
                              choices=LIKELIHOODS)
    sigma: float = setting(0.1, "the Gaussian decoder's fixed std, in units of pixel intensity "
                           "in [0, 1]", POSITIVE)
    beta: float = setting(1.0, "weight of the KL term: 1 = the ELBO, 0 = reconstruction only",
                          NON_NEGATIVE)
    mc_samples: int = setting(1, "K, samples of z per image in the reconstruction term",
                              POSITIVE_INT, metavar="K")
    architecture: str = setting("mlp", "encoder/decoder networks", choices=ARCHITECTURES)
    hidden: tuple[int, ...] = setting((400, 400), "hidden layer widths, encoder order",
                                      POSITIVE_INTS, metavar="W,W")
    activation: str = setting("relu", "hidden activation", choices=sorted(ACTIVATIONS))
    lr: float = setting(1e-3, "Adam learning rate", POSITIVE)
    adam_eps: float = setting(1e-8, "Adam epsilon", POSITIVE)
    lr_schedule: str = setting("constant", "constant, or burda: lr * 10^(-i/7) for 3^i epochs, "
                               "i = 0..7", choices=LR_SCHEDULES)


# Burda et al. (2016), section 5: the 784-200-200-50 Bernoulli VAE (their "one stochastic layer"
# model) on dynamically binarised MNIST, trained with Adam (eps 1e-4), batch 20, for 3^i passes at
# learning rate 1e-3 * 10^(-i/7), i = 0..7 (3280 epochs). They report a test NLL of 86.76 nats
# (k = 5000) for K = 1 training.
PRESETS = {
    "burda": VAEConfig(architecture="mlp", hidden=(200, 200), latent_dim=50, activation="tanh",
                       likelihood="bernoulli", mc_samples=1, batch_size=20, lr=1e-3,
                       adam_eps=1e-4, lr_schedule="burda", epochs=3280),
}


def burda_schedule(lr: float, steps_per_epoch: int) -> optax.Schedule:
    """lr * 10^(-i/7) for 3^i epochs, i = 0..7, then the last rate."""
    ends = np.cumsum([3 ** i for i in range(8)])[:-1]  # epochs after which the rate drops
    return optax.piecewise_constant_schedule(
        lr, {int(e) * steps_per_epoch: 10 ** (-1 / 7) for e in ends})


class VAEModel(struct.PyTreeNode):
    params: Any
    opt_state: Any


class VAETask(Task):
    name = "VAE"
    config_class = VAEConfig
    metric_names = ("loss", "recon", "kl", "sigma")  # nats per image; sigma: mean encoder std
    metric_units = {"loss": "nats", "recon": "nats", "kl": "nats", "sigma": "mean std"}

    def __init__(self, config: VAEConfig, steps_per_epoch: Optional[int] = None,
                 display_images: Optional[np.ndarray] = None):
        """``steps_per_epoch`` is needed to train with the "burda" schedule; ``display_images``
        (uint8, e.g. the first test images) are reconstructed after every epoch."""
        self.config = config
        self.net = VAE(config.latent_dim, config.hidden, config.architecture, config.activation)
        self._trainable = config.lr_schedule == "constant" or steps_per_epoch is not None
        lr = (config.lr if config.lr_schedule == "constant"
              else burda_schedule(config.lr, steps_per_epoch or 1))
        self.tx = optax.adam(lr, b1=0.9, b2=0.999, eps=config.adam_eps)
        self.display = None
        if display_images is not None:  # as the test evaluation sees them
            self.display = jnp.asarray(fixed_targets(self, display_images)[:DISPLAY_IMAGES])
        self._pictures = jax.jit(self._epoch_pictures)

    # ---------------------------------------------------------------- pieces
    def targets(self, images: jax.Array, key: jax.Array) -> jax.Array:
        """What the likelihood models: intensities in [0, 1], binarised for a Bernoulli decoder."""
        x = (images + 1.0) / 2.0
        if self.config.likelihood == "bernoulli":
            return jax.random.bernoulli(key, x).astype(jnp.float32)
        return x

    def encode(self, params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.net.apply({"params": params}, x, method=VAE.encode)

    def decode(self, params, z: jax.Array) -> jax.Array:
        return self.net.apply({"params": params}, z, method=VAE.decode)

    def log_likelihood(self, x: jax.Array, decoded: jax.Array) -> jax.Array:
        """log p(x | z) per image from the decoder's outputs at z."""
        if self.config.likelihood == "bernoulli":
            return losses.bernoulli_log_likelihood(x, decoded)
        return losses.gaussian_log_likelihood(x, decoded, self.config.sigma)

    def decoder_mean(self, decoded: jax.Array) -> jax.Array:
        """The decoder's mean E[x | z] in the targets' units (the Gaussian's mean unclipped:
        the mean the likelihood uses)."""
        if self.config.likelihood == "bernoulli":
            return jax.nn.sigmoid(decoded)
        return decoded

    def mean_image(self, decoded: jax.Array) -> jax.Array:
        """The decoder's mean E[x | z] as an image in [-1, 1]."""
        return jnp.clip(self.decoder_mean(decoded), 0.0, 1.0) * 2.0 - 1.0

    def reparameterise(self, mu: jax.Array, log_var: jax.Array, eps: jax.Array) -> jax.Array:
        """z = mu + sigma * eps; eps (B, K, latent) gives K samples per image."""
        return mu[:, None] + jnp.exp(0.5 * log_var)[:, None] * eps

    def objective_terms(self, params, x: jax.Array, key: jax.Array, k: int) -> dict:
        """Per image: ``log_lik`` = 1/K sum_k log p(x|z_k), ``kl``, ``sigma`` (mean std)."""
        mu, log_var = self.encode(params, x)
        eps = parallel.shard_batch(jax.random.normal(key, (x.shape[0], k, mu.shape[-1])))
        z = self.reparameterise(mu, log_var, eps)
        log_lik = self.log_likelihood(x[:, None], self.decode(params, z)).mean(axis=1)
        return {"log_lik": log_lik, "kl": losses.gaussian_kl_to_standard(mu, log_var),
                "sigma": jnp.exp(0.5 * log_var).mean(axis=-1)}

    def init(self, key: jax.Array) -> VAEModel:
        params = self.net.init(key, jnp.zeros((1,) + IMAGE_SHAPE))["params"]
        return VAEModel(params, self.tx.init(params))

    # ---------------------------------------------------------------- step
    def loss(self, params, images: jax.Array, key: jax.Array) -> tuple[jax.Array, dict]:
        """The batch mean of -(1/K sum_k log p(x|z_k)) + beta KL, and the logged metrics."""
        binarise_key, eps_key = jax.random.split(key)
        x = self.targets(images, binarise_key)
        t = self.objective_terms(params, x, eps_key, self.config.mc_samples)
        recon, kl = -t["log_lik"].mean(), t["kl"].mean()
        loss = recon + self.config.beta * kl
        return loss, {"loss": loss, "recon": recon, "kl": kl, "sigma": t["sigma"].mean()}

    def train_step(self, model: VAEModel, images: jax.Array, key: jax.Array):
        if not self._trainable:
            raise JaxgenError("the burda learning-rate schedule needs steps_per_epoch; pass it "
                              "to VAETask.")
        grads, metrics = jax.grad(self.loss, has_aux=True)(model.params, images, key)
        updates, opt_state = self.tx.update(grads, model.opt_state, model.params)
        return VAEModel(optax.apply_updates(model.params, updates), opt_state), metrics

    def sample_images(self, model: VAEModel, key: jax.Array, num: int) -> jax.Array:
        z = parallel.spread_batch(jax.random.normal(key, (num, self.config.latent_dim)))
        return parallel.gather_batch(self.mean_image(self.decode(model.params, z)))

    def reconstruct(self, params, x: jax.Array) -> jax.Array:
        """The decoder's mean at the posterior mean, in [-1, 1], for targets x."""
        mu, _ = self.encode(params, x)
        return self.mean_image(self.decode(params, mu))

    # ---------------------------------------------------------------- pictures
    def _epoch_pictures(self, params, rng):
        samples = self.sample_images(VAEModel(params, None), named_key(rng, "sample"), SAMPLE_GRID)
        if self.display is None:
            return samples, None
        return samples, interleave_rows(self.display * 2 - 1,
                                        self.reconstruct(params, self.display), ncols=8)

    def pictures(self, model: VAEModel, rng: jax.Array) -> dict[str, Picture]:
        """Prior samples; with display images, each row of them above its reconstructions."""
        samples, shown = self._pictures(model.params, rng)
        if shown is None:
            return {"": Picture(samples)}
        return {"": Picture(samples), "reconstruction": Picture(shown, ensemble_rows=2)}

    def title(self) -> str:
        return f"VAE (beta={self.config.beta}) on {self.config.dataset}"


def interleave_rows(originals: jax.Array, others: jax.Array, ncols: int) -> jax.Array:
    """Rows of ``ncols`` originals, each followed by the matching row of ``others``."""
    rows = []
    for start in range(0, len(originals), ncols):
        rows.extend([originals[start:start + ncols], others[start:start + ncols]])
    return jnp.concatenate(rows)


def fixed_targets(task: VAETask, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """The model's view of uint8 test images, the same for every model and batching: intensities
    in [0, 1], binarised once with key ``seed`` for a Bernoulli model."""
    images = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
    return np.asarray(jax.jit(task.targets)(images, jax.random.PRNGKey(seed)))
