"""The adversarial core: one train step for every GAN of pytorch-generative-model-collections.

A GAN is an :class:`Objective`: a pair of pure loss functions (D's, G's), optionally a gradient
penalty, D's architecture, the optimiser, and the variant's own settings and state. One step is
the reference's: with the same z, one Adam step of D on the D loss, then (on every
``n_critic``-th step of an epoch; every step for most) one Adam step of G on the G loss through
the updated D. Both networks run in training mode throughout, as in the reference: G's BatchNorm
running averages move once per G forward of the reference (twice on a step that updates G), D's
once per D forward (real batch, fake batch, penalty points, then the fake batch in the G step).

What every variant shares, computed once: G's forward runs once per step and its VJP serves the
G step (the reference's second forward sees the same parameters, z and batch statistics, so it
gives the same images); D sees the real batch, the fake batch and any penalty points in one pass
with per-batch BatchNorm statistics (``groups``); the transposed convolutions are sub-pixel.

The vanilla GAN (:data:`VANILLA`, the default :class:`GANTask`) is ``GAN.py``: BCE, Adam 2e-4
(0.5, 0.999), z ~ U[0,1)^62. ``jaxgen.train.gan_variants`` holds the other variants and the
registry by name. ``tests/test_gan_step.py`` checks the step against a plain transcription of the
reference's.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax

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


class LossContext(NamedTuple):
    """What a loss function may read besides D's outputs."""

    real: jax.Array  # the real batch, (B, H, W, C) in [-1, 1]
    fake: jax.Array  # G(z), the same shape; in the G loss, the images the gradient flows to
    extra: Any  # the variant's state (None for most)
    config: Any  # the variant's config


# (D(x), D(G(z)), context) -> loss, or (loss, aux) where aux reaches Objective.after_step.
DLoss = Callable[[Any, Any, LossContext], Any]
GLoss = Callable[[Any, LossContext], jax.Array]  # (D(G(z)), context) -> loss


@dataclasses.dataclass(frozen=True)
class Penalty:
    """A gradient penalty ``config.gp_weight * E(||grad f(x_hat)||_2 - 1)^2`` added to D's loss,
    f being D's output through ``transform``, at points ``points(real, fake, key, config)``."""

    points: Callable[[jax.Array, jax.Array, jax.Array, Any], jax.Array]
    transform: Callable[[jax.Array], jax.Array] = lambda out: out


def adam(lr: float, config: GANConfig) -> optax.GradientTransformation:
    return optax.adam(lr, b1=config.beta1, b2=config.beta2)


@dataclasses.dataclass(frozen=True)
class Objective:
    """One GAN variant. Only ``name``, ``d_loss`` and ``g_loss`` are required."""

    name: str  # the reference's name: file prefix, checkpoint tag, --gan-type
    d_loss: DLoss
    g_loss: GLoss
    config_class: type = GANConfig
    discriminator: Callable[[], nn.Module] = Discriminator
    penalty: Optional[Penalty] = None
    optimizer: Callable[[float, Any], optax.GradientTransformation] = adam
    # Clip D's parameters to [-config.clip, config.clip] after every D step (WGAN).
    clip_d: bool = False
    # The variant's own state (a pytree of arrays), carried and checkpointed with the model.
    init_extra: Optional[Callable[[Any], Any]] = None
    # (extra, D-loss aux, G loss, config) -> (extra, metrics) after each step.
    after_step: Optional[Callable[[Any, Any, jax.Array, Any], tuple[Any, dict]]] = None
    extra_metrics: tuple[str, ...] = ()
    # (model, the epoch's metrics as numpy arrays, config) -> (model, log lines), at epoch end.
    after_epoch: Optional[Callable[[Any, dict, Any], tuple[Any, list]]] = None


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


class StatefulGANModel(GANModel):
    """A GAN whose objective carries state of its own (BEGAN's k, WGAN's last G loss)."""

    extra: Any


VANILLA = Objective(
    name="GAN",
    d_loss=lambda real_out, fake_out, ctx: losses.discriminator_loss(real_out, fake_out),
    g_loss=lambda fake_out, ctx: losses.generator_loss(fake_out))


class GANTask(Task):
    """A GAN as the training loop sees it; ``objective`` says which (the vanilla GAN here;
    ``jaxgen.train.gan_variants.task_class(name)`` gives the others)."""

    objective: Objective = VANILLA
    name = VANILLA.name
    config_class = GANConfig

    def __init__(self, config: GANConfig, subpixel: bool = True):
        self.config = config
        self.metric_names = ("D_loss", "G_loss") + self.objective.extra_metrics
        self.generator = Generator(subpixel=subpixel)
        self.discriminator = self.objective.discriminator()
        self.tx_d = self.objective.optimizer(config.lr_d, config)
        self.tx_g = self.objective.optimizer(config.lr_g, config)
        self._generate_fixed = jax.jit(lambda g, rng: self.generate(g, self.fixed_noise(rng)))

    @property
    def needs_step_in_epoch(self) -> bool:
        """A critic that takes n_critic > 1 steps per G step counts the steps of an epoch."""
        return getattr(self.config, "n_critic", 1) > 1

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
        g = Network(g_vars["params"], g_vars["batch_stats"], self.tx_g.init(g_vars["params"]))
        d = Network(d_vars["params"], d_vars.get("batch_stats", {}),
                    self.tx_d.init(d_vars["params"]))
        if self.objective.init_extra is None:
            return GANModel(g=g, d=d)
        return StatefulGANModel(g=g, d=d, extra=self.objective.init_extra(self.config))

    def generate(self, g: Network, z: jax.Array) -> jax.Array:
        """G in inference mode (BatchNorm running averages): images in [-1, 1]."""
        return self.generator.apply(g.variables(), z, train=False)

    def sample_images(self, model: GANModel, key: jax.Array, num: int) -> jax.Array:
        return self.generate(model.g, self.sample_prior(key, num))

    # ---------------------------------------------------------------- step
    def train_step(self, model: GANModel, images: jax.Array, key: jax.Array,
                   step_in_epoch: Optional[jax.Array] = None):
        objective, config = self.objective, self.config
        g, d = model.g, model.d
        extra = getattr(model, "extra", None)
        z = parallel.shard_batch(self.sample_prior(key, images.shape[0]))
        G, D = self.generator, self.discriminator

        # G's forward, once: its VJP serves the G step.
        def g_forward(g_params):
            fake, mutated = G.apply(g.variables(g_params), z, train=True, mutable=["batch_stats"])
            return fake, mutated["batch_stats"]

        fake, g_vjp, g_stats_once = jax.vjp(g_forward, g.params, has_aux=True)

        # D step: the real batch, the fake batch (and the penalty points) in one pass of D,
        # each with its own BatchNorm statistics and running-average update, in that order.
        points = None
        if objective.penalty is not None:
            points = objective.penalty.points(images, fake, jax.random.fold_in(key, 1), config)

        def d_loss_fn(d_params):
            def run(points):
                batches = [images, fake] + ([] if points is None else [points])
                outs, stats = _grouped_apply(D, d.variables(d_params), batches)
                total = 0.0 if points is None else objective.penalty.transform(outs[2]).sum()
                return total, (outs, stats)

            if points is None:
                _, (outs, stats) = run(None)
            else:  # the penalty's gradient at the points, differentiated again below
                point_grads, (outs, stats) = jax.grad(run, has_aux=True)(points)
            loss, aux = _loss_and_aux(objective.d_loss(outs[0], outs[1],
                                                       LossContext(images, fake, extra, config)))
            if points is not None:
                loss = loss + config.gp_weight * losses.gradient_penalty(point_grads)
            return loss, (stats, aux)

        (d_loss, (d_stats, d_aux)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            d.params)
        d_updates, d_opt = self.tx_d.update(d_grads, d.opt_state, d.params)
        d_params = optax.apply_updates(d.params, d_updates)
        if objective.clip_d:
            d_params = jax.tree.map(lambda p: jnp.clip(p, -config.clip, config.clip), d_params)
        d = Network(d_params, d_stats, d_opt)

        # G step through the updated D: the loss's gradient at the images, pulled back through G.
        def g_step(g, d):
            def g_loss_fn(fake_images):
                out, mut = D.apply(d.variables(), fake_images, train=True,
                                   mutable=["batch_stats"])
                loss = objective.g_loss(out, LossContext(images, fake_images, extra, config))
                return loss, mut.get("batch_stats", {})

            (g_loss, d_stats), fake_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
            (g_grads,) = g_vjp(fake_grads)
            g_updates, g_opt = self.tx_g.update(g_grads, g.opt_state, g.params)
            g_stats = jax.tree.map(lambda old, once: _repeat_ema(old, once, BATCHNORM_MOMENTUM),
                                   g.batch_stats, g_stats_once)
            g = Network(optax.apply_updates(g.params, g_updates), g_stats, g_opt)
            return g, d.replace(batch_stats=d_stats), g_loss

        n_critic = getattr(config, "n_critic", 1)
        if n_critic == 1:
            g, d, g_loss = g_step(g, d)
        else:  # G waits: only the D step's G forward moved G's running averages
            def no_g_step(g, d):
                return g.replace(batch_stats=g_stats_once), d, extra["g_loss"]

            g, d, g_loss = lax.cond((step_in_epoch + 1) % n_critic == 0, g_step, no_g_step, g, d)

        metrics = {"D_loss": d_loss, "G_loss": g_loss}
        if objective.after_step is not None:
            extra, more = objective.after_step(extra, d_aux, g_loss, config)
            metrics.update(more)
        if extra is None:
            return GANModel(g=g, d=d), metrics
        return StatefulGANModel(g=g, d=d, extra=extra), metrics

    def update_after_epoch(self, model: GANModel, metrics: dict) -> tuple[GANModel, list]:
        if self.objective.after_epoch is None:
            return model, []
        return self.objective.after_epoch(model, metrics, self.config)

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


def _grouped_apply(D: nn.Module, variables: dict, batches: list):
    """D in training mode on equally sized ``batches`` in one pass, interleaved (image n of batch
    k is row n * len(batches) + k), each batch with its own BatchNorm statistics: D's outputs per
    batch, and the batch statistics after the running averages moved once per batch, in order."""
    k = len(batches)
    both = jnp.stack(batches, axis=1).reshape((-1,) + batches[0].shape[1:])
    out, mut = D.apply(variables, both, train=True, groups=k, mutable=["batch_stats"])
    per_batch = [jax.tree.map(lambda o, i=i: o.reshape((-1, k) + o.shape[1:])[:, i], out)
                 for i in range(k)]
    return per_batch, mut.get("batch_stats", {})


def _loss_and_aux(result) -> tuple[jax.Array, Any]:
    return result if isinstance(result, tuple) else (result, None)


def _repeat_ema(old, once, momentum):
    """A running average updated twice with the same batch value, given one update.

    once = m old + (1 - m) v and twice = m once + (1 - m) v, so twice = once + m (once - old).
    """
    return once + momentum * (once - old)


def learning_rate(opt_state) -> np.ndarray:
    """The learning rate held in an ``optax.inject_hyperparams`` state."""
    return opt_state.hyperparams["learning_rate"]


def with_learning_rate(opt_state, lr):
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})
