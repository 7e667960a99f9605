"""The reference vanilla GAN as a :class:`~jaxgen.train.task.Task`.

One train step is the reference's: with the same z, one Adam step of D on
BCE(D(x), 1) + BCE(D(G(z)), 0), then one Adam step of G on BCE(D(G(z)), 1) through the updated D.
Both networks run in training mode throughout, as in ``GAN.py``: G's BatchNorm running averages
move twice (once per G forward of the reference), D's in all three of its forwards (real batch
and fake batch separately, then the fake batch again in the G step).
``tests/test_gan_step.py`` checks the step against a plain transcription of the reference's.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxgen import losses, parallel, viz
from jaxgen.config import POSITIVE, POSITIVE_INT, UNIT_INTERVAL, setting
from jaxgen.keys import named_key
from jaxgen.models.gan import Discriminator, Generator
from jaxgen.models.layers import BATCHNORM_MOMENTUM
from jaxgen.train.history import epoch_images
from jaxgen.train.state import TrainState
from jaxgen.train.task import Task, TrainConfig

PRIORS = ("uniform", "normal")
SAMPLE_GRID = 64  # fixed-noise samples drawn after every epoch (an 8x8 grid)


@dataclasses.dataclass(frozen=True)
class GANConfig(TrainConfig):
    """The reference's hyper-parameters are the defaults."""

    z_dim: int = setting(62, "latent size", POSITIVE_INT)
    prior: str = setting("uniform", "z ~ U[0,1)^z_dim (uniform, the reference) or N(0, I)",
                         choices=PRIORS)
    lr_d: float = setting(2e-4, "Adam learning rate of D", POSITIVE)
    lr_g: float = setting(2e-4, "Adam learning rate of G", POSITIVE)
    beta1: float = setting(0.5, "Adam beta1 of both networks", UNIT_INTERVAL)
    beta2: float = setting(0.999, "Adam beta2 of both networks", UNIT_INTERVAL)


class Network(struct.PyTreeNode):
    params: Any
    batch_stats: Any
    opt_state: Any

    def variables(self, params=None, batch_stats=None) -> dict:
        return {"params": self.params if params is None else params,
                "batch_stats": self.batch_stats if batch_stats is None else batch_stats}


class GANModel(struct.PyTreeNode):
    g: Network
    d: Network


class GANTask(Task):
    name = "GAN"
    config_class = GANConfig
    metric_names = ("D_loss", "G_loss")

    def __init__(self, config: GANConfig, subpixel: bool = True):
        self.config = config
        self.generator = Generator(subpixel=subpixel)
        self.discriminator = Discriminator()
        self.tx_d = optax.adam(config.lr_d, b1=config.beta1, b2=config.beta2)
        self.tx_g = optax.adam(config.lr_g, b1=config.beta1, b2=config.beta2)
        self._generate_fixed = jax.jit(lambda g, rng: self.generate(g, self.fixed_noise(rng)))

    # ---------------------------------------------------------------- pieces
    def sample_prior(self, key: jax.Array, num: int) -> jax.Array:
        shape = (num, self.config.z_dim)
        if self.config.prior == "uniform":
            return jax.random.uniform(key, shape)
        return jax.random.normal(key, shape)

    def init(self, key: jax.Array) -> GANModel:
        g_key, d_key = jax.random.split(key)
        g_vars = self.generator.init(g_key, jnp.zeros((1, self.config.z_dim)), train=False)
        d_vars = self.discriminator.init(d_key, jnp.zeros((1, 28, 28, 1)), train=False)
        return GANModel(
            g=Network(g_vars["params"], g_vars["batch_stats"], self.tx_g.init(g_vars["params"])),
            d=Network(d_vars["params"], d_vars["batch_stats"], self.tx_d.init(d_vars["params"])))

    def generate(self, g: Network, z: jax.Array) -> jax.Array:
        """G in inference mode (BatchNorm running averages): images in [-1, 1]."""
        return self.generator.apply(g.variables(), z, train=False)

    def sample_images(self, model: GANModel, key: jax.Array, num: int) -> jax.Array:
        return self.generate(model.g, self.sample_prior(key, num))

    # ---------------------------------------------------------------- step
    def train_step(self, model: GANModel, images: jax.Array, key: jax.Array):
        g, d = model.g, model.d
        z = parallel.shard_batch(self.sample_prior(key, images.shape[0]))
        G, D = self.generator, self.discriminator

        # G's forward, once. The reference runs it twice (D step, then G step), but both runs see
        # the same parameters, z and batch statistics, so they give the same images: we keep the
        # VJP of this one for the G step and apply its running-average update twice.
        def g_forward(g_params):
            fake, mutated = G.apply(g.variables(g_params), z, train=True, mutable=["batch_stats"])
            return fake, mutated["batch_stats"]

        fake, g_vjp, g_stats_once = jax.vjp(g_forward, g.params, has_aux=True)
        g_stats = jax.tree.map(lambda old, once: _repeat_ema(old, once, BATCHNORM_MOMENTUM),
                               g.batch_stats, g_stats_once)

        # D step on the real batch and the fake batch, each with its own BatchNorm statistics
        # and running-average update as in the reference, computed in one pass of D over both
        # (interleaved: the real and the fake image n are rows 2n and 2n + 1).
        def d_loss_fn(d_params):
            both = jnp.stack([images, fake], axis=1).reshape((-1,) + images.shape[1:])
            logits, mut = D.apply(d.variables(d_params), both, train=True, groups=2,
                                  mutable=["batch_stats"])
            logits = logits.reshape(-1, 2)
            return losses.discriminator_loss(logits[:, 0], logits[:, 1]), mut["batch_stats"]

        (d_loss, d_stats), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d.params)
        d_updates, d_opt = self.tx_d.update(d_grads, d.opt_state, d.params)
        d = Network(optax.apply_updates(d.params, d_updates), d_stats, d_opt)

        # G step through the updated D: the loss's gradient at the images, pulled back through G.
        def g_loss_fn(fake_images):
            logits, mut = D.apply(d.variables(), fake_images, train=True, mutable=["batch_stats"])
            return losses.generator_loss(logits), mut["batch_stats"]

        (g_loss, d_stats), fake_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
        (g_grads,) = g_vjp(fake_grads)
        g_updates, g_opt = self.tx_g.update(g_grads, g.opt_state, g.params)
        g = Network(optax.apply_updates(g.params, g_updates), g_stats, g_opt)
        d = d.replace(batch_stats=d_stats)
        return GANModel(g=g, d=d), {"D_loss": d_loss, "G_loss": g_loss}

    # ---------------------------------------------------------------- pictures
    def fixed_noise(self, rng: jax.Array) -> jax.Array:
        return self.sample_prior(named_key(rng, "sample"), SAMPLE_GRID)

    def epoch_end(self, state: TrainState, epoch: int, workdir: str) -> None:
        images = self._generate_fixed(state.model.g, state.rng)
        if parallel.is_main_process():
            viz.save_image_grid(parallel.to_host(images),
                                os.path.join(workdir, f"{self.name}_epoch{epoch:03d}.png"),
                                ncols=8)

    def train_end(self, workdir: str, history: dict) -> None:
        viz.save_gif(epoch_images(workdir, self.name),
                     os.path.join(workdir, f"{self.name}_generate_animation.gif"))


def _repeat_ema(old, once, momentum):
    """A running average updated twice with the same batch value, given one update.

    once = m old + (1 - m) v and twice = m once + (1 - m) v, so twice = once + m (once - old).
    """
    return once + momentum * (once - old)
