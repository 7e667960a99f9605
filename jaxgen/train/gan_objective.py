"""What a GAN of the collection is: its settings (:class:`GANConfig`, the reference's
hyper-parameters as defaults) and its :class:`Objective`: a pair of pure loss functions (D's,
G's) and what else the step reads (a gradient penalty, a projection of D's parameters, the D:G
schedule, D's module, the optimiser, state of its own and a step hook, a conditional GAN's
codes). The step that composes them is ``jaxgen.train.gan_step``; the task the loop trains is
``jaxgen.train.gan.GANTask``; the registry of variants by name is
``jaxgen.train.gan_variants``. :data:`VANILLA` is the reference's ``GAN.py``: BCE, Adam 2e-4
(0.5, 0.999), z ~ U[0,1)^62.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxgen import losses
from jaxgen.config import POSITIVE, POSITIVE_INT, UNIT_INTERVAL, Check, setting
from jaxgen.models.gan import Discriminator
from jaxgen.models.layers import CONV_FORMS
from jaxgen.train.gan_step import StepHook
from jaxgen.train.task import TrainConfig

PRIORS = ("uniform", "normal")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BATCHNORM_SCALE_INITS = ("ones", "uniform")


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
    batchnorm_scale_init: str = setting(
        "ones", "initial scale of every BatchNorm of G and D: ones (PyTorch since 1.0, which "
        "runs the reference's code today) or uniform, U[0, 1) per channel (PyTorch 0.4, under "
        "which the reference's published pictures were made)", choices=BATCHNORM_SCALE_INITS,
        absent="ones")
    dtype: str = setting(
        "float32", "what G and D compute in: float32, or bfloat16 (parameters, optimiser states, "
        "BatchNorm statistics and losses stay float32)", choices=tuple(DTYPES), absent="float32")
    conv_forms: str = setting(
        "auto", "how the convolutions are computed, the same maths: canonical (sub-pixel "
        "transposed convolutions, gradients as NHWC convolutions; written for XLA:CPU), xla "
        "(XLA's own forms), or auto (canonical on CPU, xla on accelerators)",
        choices=("auto",) + CONV_FORMS, resumable=True, absent="auto")
    width: float = setting(
        1.0, "G's and D's hidden layers' channels and units as a multiple of the reference's "
        "(1: the reference's architecture; e.g. 0.25 for quick tries)", POSITIVE, absent=1.0)
    g_ema: float = setting(
        0.0, "decay of an exponential moving average of G's weights, kept in the checkpoint and "
        "used for samples, grids and evaluation (e.g. 0.999; 0: none)",
        Check(lambda v: 0 <= v < 1, "a number in [0, 1)"), metavar="DECAY", absent=0.0)


class LossContext(NamedTuple):
    """What a loss function may read besides D's outputs."""

    real: jax.Array  # the real batch, (B, H, W, C) in [-1, 1]
    fake: jax.Array  # G(z), the same shape; in the G loss, the images the gradient flows to
    extra: Any  # the variant's state (None for most)
    config: Any  # the variant's config
    labels: Any = None  # a conditional GAN's categories (B,) int32: the one-hot code G was given
    continuous: Any = None  # infoGAN's continuous codes (B, n) in [-1, 1]
    # In the G loss of an objective with g_sees_real: D's outputs on the real batch through the
    # D just updated (a relativistic loss compares them with D's outputs on G(z)).
    real_out: Any = None


@dataclasses.dataclass(frozen=True)
class Codes:
    """What a conditional G sees beside z, in the reference's order: z, then ``continuous``
    codes U(-1, 1), then a one-hot category of ``num_classes``. The category is the real batch's
    label where ``from_data(config)`` (CGAN, ACGAN; a supervised infoGAN), else drawn uniformly
    (infoGAN)."""

    num_classes: int = 10
    continuous: int = 0
    from_data: Callable[[Any], bool] = lambda config: True

    @property
    def size(self) -> int:
        return self.continuous + self.num_classes


# (D(x), D(G(z)), context) -> loss, or (loss, aux) where aux reaches Objective.after_step.
DLoss = Callable[[Any, Any, LossContext], Any]
GLoss = Callable[[Any, LossContext], jax.Array]  # (D(G(z)), context) -> loss


@dataclasses.dataclass(frozen=True)
class Penalty:
    """A gradient penalty ``weight(config) * E(||grad f(x_hat)||_2 - 1)^2`` added to D's loss,
    f being D's output through ``transform``, at points ``points(real, fake, key, config)``."""

    points: Callable[[jax.Array, jax.Array, jax.Array, Any], jax.Array]
    weight: Callable[[Any], float]
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
    # D's module, called with the keywords conv_forms, dtype and width (the GAN's settings)
    discriminator: Callable[..., nn.Module] = Discriminator
    penalty: Optional[Penalty] = None
    optimizer: Callable[[float, Any], optax.GradientTransformation] = adam
    # (D's parameters, config) -> D's parameters after every D step (WGAN: a clip).
    project_d: Optional[Callable[[Any, Any], Any]] = None
    # config -> D steps per G step: G is updated on every n-th step of an epoch. A GAN that
    # declares one (a critic) carries the last G step's loss in its state, reported while G waits.
    n_critic: Optional[Callable[[Any], int]] = None
    # Whether G's loss also sees D's outputs on the real batch (LossContext.real_out).
    g_sees_real: bool = False
    # The variant's own state (a dict of arrays), carried and checkpointed with the model:
    # (config, the freshly initialised GANModel) -> state.
    init_extra: Optional[Callable[[Any, Any], dict]] = None
    # A step hook, (state, StepOutcome, config) -> (state, metrics), after each step.
    after_step: Optional[StepHook] = None
    extra_metrics: tuple[str, ...] = ()
    # (model, the epoch's metrics as numpy arrays, config) -> (model, log lines), at epoch end.
    after_epoch: Optional[Callable[[Any, dict, Any], tuple[Any, list]]] = None
    # A conditional GAN: G's codes beside z, and whether D sees the category as planes (CGAN).
    codes: Optional[Codes] = None
    condition_d: bool = False
    # infoGAN's information loss (D(G(z)), context) -> loss, stepped by a third Adam over G's and
    # D's parameters after the G step; logged as info_loss.
    info_loss: Optional[GLoss] = None


VANILLA = Objective(
    name="GAN",
    d_loss=lambda real_out, fake_out, ctx: losses.discriminator_loss(real_out, fake_out),
    g_loss=lambda fake_out, ctx: losses.generator_loss(fake_out))
