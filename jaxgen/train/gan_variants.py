"""The GANs of pytorch-generative-model-collections on the adversarial core, and the registry
of objectives by name (``--gan-type``).

Each variant is its settings (a config declared once), its pair of loss functions and one entry
in :data:`OBJECTIVES`; everything else (the step, sharding, checkpoints, pictures) is
``jaxgen.train.gan``'s. As the reference files have them (``LSGAN.py``, ``WGAN.py``,
``WGAN_GP.py``, ``DRAGAN.py``, ``EBGAN.py``, ``BEGAN.py``), with the same G, Adam (0.5, 0.999),
batch 64 and z ~ U[0,1)^62:

- LSGAN (Mao et al. 2017): least squares against 1 and 0 on D's raw output.
- WGAN (Arjovsky et al. 2017): the critic loss -E D(x) + E D(G(z)); D's parameters clipped to
  [-0.01, 0.01] after every critic step; G updated on every 5th step of an epoch.
- WGAN_GP (Gulrajani et al. 2017): the WGAN losses plus 10 E(||grad D(x_hat)||_2 - 1)^2 at
  x_hat = a x + (1 - a) G(z), a ~ U(0, 1) per image; n_critic 5; no clipping.
- DRAGAN (Kodali et al. 2017): the GAN's BCE plus 0.25 times the same penalty of sigmoid(D) at
  x + a (x_p - x), x_p = x + 0.5 std(x) U[0, 1).
- EBGAN (Zhao et al. 2017): an autoencoder D; D loss MSE(x) + max(0, 1 - MSE(G(z))), G loss
  MSE(G(z)) + 0.1 PT(codes of G(z)). The reference's pulling-away term normalises by one norm of
  the whole batch; this is the paper's, row by row (``jaxgen.losses.pulling_away_term``).
  BatchNorm scales start U[0, 1), as PyTorch 0.4 drew them for the reference's published runs
  (``batchnorm_scale_init``; ones for the others, as PyTorch draws them since 1.0).
- BEGAN (Berthelot et al. 2017): an autoencoder D, k's proportional control and learning rates
  halved when M rose (``jaxgen.train.began``).

The conditional three (``CGAN.py``, ``ACGAN.py``, ``infoGAN.py``) feed G z with its codes
(:class:`~jaxgen.train.gan_objective.Codes`) and train on the real batch's labels:

- CGAN (Mirza & Osindero 2014): G sees z with the one-hot label, D the image with the label as
  10 constant planes; the vanilla GAN's BCE.
- ACGAN (Odena et al. 2017): G as CGAN's; D has a second head, 10 class logits; D's loss adds
  the class cross-entropy on the real and on the fake batch, G's on the fake batch; G is given
  the real batch's labels.
- infoGAN (Chen et al. 2016): G sees z with 2 continuous codes U(-1, 1) and a 10-way categorical
  code, drawn uniformly (not the labels, unless ``supervised``); D's last layer has 12 more
  outputs, the Q head (continuous codes, then the category's logits); the information loss
  CE(category) + MSE(continuous codes) on G(z) is stepped by a third Adam over G's and D's
  parameters, at D's learning rate, after the G step. Two fixes of the reference: it reads the
  real/fake logit from column 1, the first continuous code's column (``x[:, self.output_dim]``
  where column 0 was meant); here it is column 0. Its third optimiser is handed, besides the
  information loss's gradient, what the D and G losses left in the gradients (no ``zero_grad``
  before ``info_loss.backward()``); here it steps on the information loss's gradient alone.

Beyond the reference, on its vanilla GAN's networks, optimiser and z:

- HINGE (Lim & Ye 2017; Miyato et al. 2018): D's loss E max(0, 1 - D(x)) + E max(0, 1 + D(G(z)))
  on D's raw output, G's -E D(G(z)).
- RaGAN (Jolicoeur-Martineau 2019), the relativistic average GAN: D's loss is the BCE of
  D(x) - E D(G(z)) against 1 and of D(G(z)) - E D(x) against 0; G's the same with the roles
  swapped, D(x) through the D just updated (``Objective.g_sees_real``).

A new variant: a config (if it has settings of its own), two loss functions and
``register(Objective(...))``; state of its own through ``init_extra`` and a step hook
(``after_step``, which sees the step's :class:`~jaxgen.train.gan_step.StepOutcome`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxgen import losses, parallel
from jaxgen.config import NON_NEGATIVE, POSITIVE, POSITIVE_INT, inherited, setting
from jaxgen.errors import JaxgenError
from jaxgen.models.gan import Discriminator, EnergyDiscriminator
from jaxgen.train.began import BEGAN
from jaxgen.train.gan import GANTask
from jaxgen.train.gan_objective import (
    VANILLA,
    Codes,
    GANConfig,
    LossContext,
    Objective,
    Penalty,
)

# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class CriticConfig(GANConfig):
    """A Wasserstein critic's: D takes ``n_critic`` steps per G step."""

    n_critic: int = setting(5, "critic steps per G step: G is updated on every n-th step of an "
                            "epoch", POSITIVE_INT)


@dataclasses.dataclass(frozen=True)
class WGANConfig(CriticConfig):
    clip: float = setting(0.01, "D's parameters are clipped to [-clip, clip] after every "
                          "critic step", POSITIVE)


@dataclasses.dataclass(frozen=True)
class WGANGPConfig(CriticConfig):
    gp_weight: float = setting(10.0, "weight of the gradient penalty at interpolates of real "
                               "and generated images", NON_NEGATIVE)


@dataclasses.dataclass(frozen=True)
class DRAGANConfig(GANConfig):
    gp_weight: float = setting(0.25, "weight of the gradient penalty at perturbed real images",
                               NON_NEGATIVE)
    perturbation: float = setting(0.5, "x_p = x + perturbation * std(x) * U[0, 1)", POSITIVE)


@dataclasses.dataclass(frozen=True)
class EBGANConfig(GANConfig):
    # PyTorch 0.4's BatchNorm scales, under which the reference's published EBGAN runs were
    # made: with them EBGAN leaves its early collapse, with ones our runs did not (docs/gan.md).
    batchnorm_scale_init: str = inherited(GANConfig, "batchnorm_scale_init", "uniform")
    margin: float = setting(1.0, "D's hinge: fake images' energy is pushed up to the margin",
                            POSITIVE)
    pt_weight: float = setting(0.1, "weight of the pulling-away term in G's loss", NON_NEGATIVE)


@dataclasses.dataclass(frozen=True)
class InfoGANConfig(GANConfig):
    supervised: bool = setting(False, "feed G the real batch's labels as its categorical code "
                               "(the reference's SUPERVISED) instead of uniform draws")


# ----------------------------------------------------------------------------- losses


def _outputs_only(d_loss, g_loss):
    """A pair of ``jaxgen.losses`` functions of D's outputs alone, in the signatures an
    :class:`~jaxgen.train.gan_objective.Objective` calls: ``(real_out, fake_out, ctx)`` and
    ``(fake_out, ctx)``."""
    return (lambda real_out, fake_out, ctx: d_loss(real_out, fake_out),
            lambda fake_out, ctx: g_loss(fake_out))


_LEAST_SQUARES = _outputs_only(losses.least_squares_discriminator_loss,
                               losses.least_squares_generator_loss)
_CRITIC = _outputs_only(losses.wasserstein_critic_loss, losses.wasserstein_generator_loss)
_HINGE = _outputs_only(losses.hinge_discriminator_loss, losses.hinge_generator_loss)


def _interpolates(real, fake, key, config):
    """x_hat = a x + (1 - a) G(z), a ~ U(0, 1) per image (WGAN-GP)."""
    a = parallel.shard_batch(jax.random.uniform(key, (real.shape[0], 1, 1, 1)))
    return a * real + (1 - a) * jax.lax.stop_gradient(fake)


def _perturbed_real(real, fake, key, config):
    """x + a (x_p - x), x_p = x + perturbation std(x) U[0, 1), a ~ U(0, 1) per image (DRAGAN;
    std over every pixel of the batch, unbiased, as torch's ``x.std()``)."""
    a_key, noise_key = jax.random.split(key)
    a = parallel.shard_batch(jax.random.uniform(a_key, (real.shape[0], 1, 1, 1)))
    noise = parallel.shard_batch(jax.random.uniform(noise_key, real.shape))
    x_p = real + config.perturbation * jnp.std(real, ddof=1) * noise
    return real + a * (x_p - real)


def _energy_d(real_out, fake_out, ctx: LossContext):
    (real_recon, _), (fake_recon, _) = real_out, fake_out
    return losses.energy_discriminator_loss(losses.mse(real_recon, ctx.real),
                                            losses.mse(fake_recon, ctx.fake), ctx.config.margin)


def _energy_g(fake_out, ctx: LossContext):
    recon, codes = fake_out
    return (losses.mse(recon, jax.lax.stop_gradient(ctx.fake))
            + ctx.config.pt_weight * losses.pulling_away_term(codes))


def _auxiliary_classifier_d(real_out, fake_out, ctx: LossContext):
    (real_logits, real_classes), (fake_logits, fake_classes) = real_out, fake_out
    return (losses.discriminator_loss(real_logits, fake_logits)
            + losses.class_cross_entropy(real_classes, ctx.labels)
            + losses.class_cross_entropy(fake_classes, ctx.labels))


def _auxiliary_classifier_g(fake_out, ctx: LossContext):
    fake_logits, fake_classes = fake_out
    return (losses.generator_loss(fake_logits)
            + losses.class_cross_entropy(fake_classes, ctx.labels))


def _info_d(real_out, fake_out, ctx: LossContext):
    return losses.discriminator_loss(real_out[0], fake_out[0])


def _info_g(fake_out, ctx: LossContext):
    return losses.generator_loss(fake_out[0])


def _information_loss(fake_out, ctx: LossContext):
    """CE of the Q head's category logits + MSE of its continuous codes, weight 1 each."""
    q = fake_out[1]
    n = ctx.continuous.shape[-1]
    return (losses.class_cross_entropy(q[:, n:], ctx.labels)
            + jnp.mean((q[:, :n] - ctx.continuous) ** 2))


def _gp_weight(config) -> float:
    return config.gp_weight


def _n_critic(config) -> int:
    return config.n_critic


def _clip(params, config):
    """WGAN's projection: every parameter of D clipped to [-clip, clip]."""
    return jax.tree.map(lambda p: jnp.clip(p, -config.clip, config.clip), params)


def _relativistic_d(real_out, fake_out, ctx: LossContext):
    return losses.relativistic_average_loss(real_out, fake_out)


def _relativistic_g(fake_out, ctx: LossContext):
    """D's roles swapped: G wants its images to look more real than the real batch, through the
    D just updated (``ctx.real_out``, the real batch's outputs of that D)."""
    return losses.relativistic_average_loss(fake_out, ctx.real_out)


# ----------------------------------------------------------------------------- registry

OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Adds ``objective`` to the registry: ``--gan-type NAME``, restore and sampling find it."""
    if objective.name in OBJECTIVES:
        raise ValueError(f"a GAN objective named {objective.name!r} is registered already")
    OBJECTIVES[objective.name] = objective
    return objective


register(VANILLA)
register(Objective("LSGAN", *_LEAST_SQUARES))
register(Objective("WGAN", *_CRITIC, config_class=WGANConfig, project_d=_clip,
                   n_critic=_n_critic))
register(Objective("WGAN_GP", *_CRITIC, config_class=WGANGPConfig,
                   penalty=Penalty(_interpolates, _gp_weight), n_critic=_n_critic))
register(Objective("DRAGAN", VANILLA.d_loss, VANILLA.g_loss, config_class=DRAGANConfig,
                   penalty=Penalty(_perturbed_real, _gp_weight, transform=jax.nn.sigmoid)))
register(Objective("EBGAN", _energy_d, _energy_g, config_class=EBGANConfig,
                   discriminator=EnergyDiscriminator))
register(BEGAN)


# Beyond the reference: two losses on its GAN (the same D, G, Adam, batch and z).
register(Objective("HINGE", *_HINGE))
register(Objective("RaGAN", _relativistic_d, _relativistic_g, g_sees_real=True))


register(Objective("CGAN", VANILLA.d_loss, VANILLA.g_loss, codes=Codes(10), condition_d=True))
register(Objective("ACGAN", _auxiliary_classifier_d, _auxiliary_classifier_g, codes=Codes(10),
                   discriminator=functools.partial(Discriminator, head_outputs=10)))
register(Objective("infoGAN", _info_d, _info_g, config_class=InfoGANConfig,
                   codes=Codes(10, continuous=2, from_data=lambda config: config.supervised),
                   discriminator=functools.partial(Discriminator, head_outputs=2 + 10),
                   info_loss=_information_loss, extra_metrics=("info_loss",)))


@functools.cache
def task_class(name: str) -> type[GANTask]:
    """The Task class of the registered objective ``name`` (GANTask itself for "GAN")."""
    if name not in OBJECTIVES:
        raise JaxgenError(f"unknown GAN type {name!r}; choose one of "
                          f"{', '.join(OBJECTIVES)}.")
    objective = OBJECTIVES[name]
    if objective is VANILLA:
        return GANTask
    return type(f"{name}Task", (GANTask,), {"objective": objective, "name": name,
                                            "config_class": objective.config_class})
