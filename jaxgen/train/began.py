"""BEGAN (Berthelot et al. 2017), as the reference's ``BEGAN.py`` trains it, on the adversarial
core: an autoencoder D without BatchNorm and L1 reconstruction loss L; D's loss L(x) - k L(G(z)),
G's L(G(z)); k += 0.001 (gamma L(x) - L(G(z))) clipped to [0, 1] after each step, k from 0,
gamma 1; the convergence measure M = L(x) + |gamma L(x) - L(G(z))| logged with k; both learning
rates (2e-4) halved, down to 2e-5, at the end of an epoch whose M rose. The reference compares
the last iteration's M; this compares the epoch's mean M with the previous epoch's, as its own
bookkeeping (``M['cur']`` a list) intends.

Its state beside G and D (k, the reference M) is the objective's ``init_extra``, its control of
k a step hook, its learning rates an Adam whose rate lives in its state (``after_epoch``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen import losses, parallel
from jaxgen.config import POSITIVE, setting
from jaxgen.models.gan import BoundaryDiscriminator
from jaxgen.train.gan_objective import GANConfig, LossContext, Objective


@dataclasses.dataclass(frozen=True)
class BEGANConfig(GANConfig):
    gamma: float = setting(1.0, "diversity ratio: the equilibrium E L(G(z)) = gamma E L(x)",
                           POSITIVE)
    k_lr: float = setting(0.001, "lambda_k, the step of the equilibrium weight k", POSITIVE)
    lr_floor: float = setting(2e-5, "the learning rates are halved at the end of an epoch whose "
                              "mean M rose, down to this floor", POSITIVE)


def _boundary_d(real_out, fake_out, ctx: LossContext):
    real_loss = losses.l1_reconstruction(real_out, ctx.real)
    fake_loss = losses.l1_reconstruction(fake_out, ctx.fake)
    return real_loss - ctx.extra["k"] * fake_loss, {"real_loss": real_loss}


def _boundary_g(fake_out, ctx: LossContext):
    return losses.l1_reconstruction(fake_out, ctx.fake)  # through D and through the target


def _began_init(config, model) -> dict:
    return {"k": jnp.zeros((), jnp.float32), "m_previous": jnp.ones((), jnp.float32)}


def began_update(k, real_loss, g_loss, config):
    """BEGAN's proportional control of k, and the convergence measure M."""
    balance = config.gamma * real_loss - g_loss
    return jnp.clip(k + config.k_lr * balance, 0.0, 1.0), real_loss + jnp.abs(balance)


def _began_after_step(extra, outcome, config):
    k, m = began_update(extra["k"], outcome.d_aux["real_loss"], outcome.g_loss, config)
    return {**extra, "k": k}, {"M": m, "k": k}


def _injected_adam(lr: float, config) -> optax.GradientTransformation:
    """Adam whose learning rate lives in its state, so BEGAN can halve it (and resume it)."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=config.beta1,
                                                b2=config.beta2)


def _began_after_epoch(model, metrics: dict, config):
    """Halve both learning rates (not below ``lr_floor``) when this epoch's mean M is above the
    previous reference M; otherwise this epoch's M becomes the reference."""
    previous = float(parallel.to_host(model.extra["m_previous"]))
    current = float(np.mean(metrics["M"]))
    if previous < current:
        old = float(parallel.to_host(learning_rate(model.g.opt_state)))

        def halve(net):
            lr = learning_rate(net.opt_state)
            halved = jnp.maximum(lr / 2.0, config.lr_floor).astype(lr.dtype)
            return net.replace(opt_state=with_learning_rate(net.opt_state, _like(halved, lr)))

        model = model.replace(g=halve(model.g), d=halve(model.d))
        new = float(parallel.to_host(learning_rate(model.g.opt_state)))
        return model, [f"M_pre: {previous:.8f}, M_cur: {current:.8f}, lr: {old:.3g} --> {new:.3g}"]
    m_previous = _like(jnp.asarray(current, jnp.float32), model.extra["m_previous"])
    return (model.replace(extra={**model.extra, "m_previous": m_previous}),
            [f"M_pre: {previous:.8f}, M_cur: {current:.8f}"])


def _like(value: jax.Array, old: jax.Array) -> jax.Array:
    """``value`` placed as ``old`` is (replicated over the training mesh)."""
    return jax.device_put(value, old.sharding)


def learning_rate(opt_state) -> np.ndarray:
    """The learning rate held in an ``optax.inject_hyperparams`` state."""
    return opt_state.hyperparams["learning_rate"]


def with_learning_rate(opt_state, lr):
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})


BEGAN = Objective("BEGAN", _boundary_d, _boundary_g, config_class=BEGANConfig,
                  discriminator=BoundaryDiscriminator, optimizer=_injected_adam,
                  init_extra=_began_init, after_step=_began_after_step, extra_metrics=("M", "k"),
                  after_epoch=_began_after_epoch)
