"""The GAN train step, assembled in Python from small pure parts before it is traced.

One step is the reference's: with the same z, one optimiser step of D on the D loss, then (on
every ``n_critic``-th step of an epoch; every step for most GANs) one of G on the G loss through
the updated D. The parts, each a module-level function of arrays and modules:

- :func:`generator_forward`: G's forward, once; its VJP serves the G step (the reference's second
  forward sees the same parameters, z and batch statistics, so it gives the same images).
- :func:`discriminator_update`: D on the real batch, the fake batch and any penalty points in
  one pass with per-batch BatchNorm statistics (:func:`grouped_apply`), the D loss plus
  ``weight * E(||grad f(x_hat)||_2 - 1)^2``, the optimiser step, then an optional projection
  of D's parameters (WGAN's clip).
- :func:`generator_update`: the G loss's gradient at the images (D on the fake batch, and on the
  real batch too for a loss that compares them), pulled back through G; G's BatchNorm running
  averages moved as the reference's two G forwards move them; infoGAN's information update.
- the schedule: with ``n_critic`` > 1, G waits on the other steps (``lax.cond``) and the step
  reports the last G step's loss.
- the objective's step hooks (:class:`StepOutcome` -> state, metrics), e.g. BEGAN's k or an
  exponential moving average of G.

:func:`make_step` composes them for a :class:`~jaxgen.train.gan.GANTask`; nothing about a
particular variant is written here.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxgen import losses
from jaxgen.models.layers import BATCHNORM_MOMENTUM


class StepOutcome(NamedTuple):
    """What a step hook sees after the D and G updates."""

    g: Any  # G's Network after the step
    d: Any  # D's Network after the step
    d_aux: Any  # the D loss's auxiliary output (None unless the loss returns (loss, aux))
    g_loss: jax.Array  # this step's G loss (the last G step's on a step where G waits)


# (extra state, outcome, config) -> (extra state, metrics)
StepHook = Callable[[dict, StepOutcome, Any], tuple[dict, dict]]


def generator_forward(G: nn.Module, g, z: jax.Array):
    """G in training mode on ``z``: (images, their VJP in G's parameters, G's batch statistics
    after one running-average update)."""
    def forward(params):
        fake, mutated = G.apply(g.variables(params), z, train=True, mutable=["batch_stats"])
        return fake, mutated["batch_stats"]

    return jax.vjp(forward, g.params, has_aux=True)


def discriminator_update(objective, D: nn.Module, tx: optax.GradientTransformation, d,
                         real: jax.Array, fake: jax.Array, points: Optional[jax.Array],
                         condition, context: Callable, config):
    """One optimiser step of D: (D, D loss, the loss's aux). ``points`` are the penalty's (None
    without one); ``context(fake)`` is the losses'
    :class:`~jaxgen.train.gan_objective.LossContext`."""
    penalty = objective.penalty

    def loss_fn(params):
        def run(points):
            batches = [real, fake] + ([] if points is None else [points])
            outs, stats = grouped_apply(D, d.variables(params), batches, condition)
            total = 0.0 if points is None else penalty.transform(outs[2]).sum()
            return total, (outs, stats)

        if points is None:
            _, (outs, stats) = run(None)
        else:  # the penalty's gradient at the points, differentiated again below
            point_grads, (outs, stats) = jax.grad(run, has_aux=True)(points)
        loss, aux = _loss_and_aux(objective.d_loss(outs[0], outs[1], context(fake)))
        if points is not None:
            loss = loss + penalty.weight(config) * losses.gradient_penalty(point_grads)
        return loss, (stats, aux)

    (loss, (stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d.params)
    updates, opt_state = tx.update(grads, d.opt_state, d.params)
    params = optax.apply_updates(d.params, updates)
    if objective.project_d is not None:
        params = objective.project_d(params, config)
    return d.replace(params=params, batch_stats=stats, opt_state=opt_state), loss, aux


def _d_on_fake(objective, D: nn.Module, d, params, fake_images, real, condition, context):
    """D in training mode on the fake batch (with the real batch as a second group when the G
    loss compares them): (D's outputs on fake, the context, D's batch statistics)."""
    if objective.g_sees_real:
        outs, stats = grouped_apply(D, d.variables(params), [fake_images, real], condition)
        return outs[0], context(fake_images)._replace(real_out=outs[1]), stats
    out, mutated = D.apply(d.variables(params), fake_images, train=True,
                           mutable=["batch_stats"], **condition_kwargs(condition))
    return out, context(fake_images), mutated.get("batch_stats", {})


def generator_update(objective, D: nn.Module, tx: optax.GradientTransformation,
                     tx_info: Optional[optax.GradientTransformation], g, d, fake, g_vjp,
                     g_stats_once, real, condition, context: Callable, extra):
    """One optimiser step of G through the (updated) D, and infoGAN's information step over G
    and D: (G, D, G loss, extra state, metrics)."""
    d_on_fake = functools.partial(_d_on_fake, objective, D, d, real=real, condition=condition,
                                  context=context)
    if objective.info_loss is None:
        def g_loss_fn(fake_images):
            out, ctx, stats = d_on_fake(d.params, fake_images)
            return objective.g_loss(out, ctx), stats

        (g_loss, d_stats), fake_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
    else:  # one pass of D on G(z) for both losses, as the reference's single forward
        def both(fake_images, d_params):
            out, ctx, stats = d_on_fake(d_params, fake_images)
            return (objective.g_loss(out, ctx), objective.info_loss(out, ctx)), stats

        (g_loss, info_loss), pullback, d_stats = jax.vjp(both, fake, d.params, has_aux=True)
        one, zero = jnp.ones_like(g_loss), jnp.zeros_like(g_loss)
        fake_grads, _ = pullback((one, zero))
    (g_grads,) = g_vjp(fake_grads)
    updates, g_opt = tx.update(g_grads, g.opt_state, g.params)
    g_stats = jax.tree.map(lambda old, once: _repeat_ema(old, once, BATCHNORM_MOMENTUM),
                           g.batch_stats, g_stats_once)
    g = g.replace(params=optax.apply_updates(g.params, updates), batch_stats=g_stats,
                  opt_state=g_opt)
    d = d.replace(batch_stats=d_stats)
    if objective.info_loss is None:
        return g, d, g_loss, extra, {}
    info_fake_grads, info_d_grads = pullback((zero, one))
    (info_g_grads,) = g_vjp(info_fake_grads)
    updates, info_opt = tx_info.update((info_g_grads, info_d_grads), extra["info_opt"],
                                       (g.params, d.params))
    g = g.replace(params=optax.apply_updates(g.params, updates[0]))
    d = d.replace(params=optax.apply_updates(d.params, updates[1]))
    return g, d, g_loss, {**extra, "info_opt": info_opt}, {"info_loss": info_loss}


def make_step(task) -> Callable:
    """The pure train step of a :class:`~jaxgen.train.gan.GANTask`:
    ``step(model, images, key, step_in_epoch=None, labels=None) -> (model, metrics)``."""
    objective, config = task.objective, task.config
    G, D = task.generator, task.discriminator
    n_critic = 1 if objective.n_critic is None else objective.n_critic(config)
    hooks = task.step_hooks

    def step(model, images, key, step_in_epoch=None, labels=None):
        extra = model.extra
        z, codes, condition = task.step_inputs(images, key, labels)
        context = functools.partial(task.loss_context, images, extra=extra, codes=codes)
        fake, g_vjp, g_stats_once = generator_forward(G, model.g, z)
        points = (None if objective.penalty is None else
                  objective.penalty.points(images, fake, jax.random.fold_in(key, 1), config))
        d, d_loss, d_aux = discriminator_update(objective, D, task.tx_d, model.d, images, fake,
                                                points, condition, context, config)
        update_g = functools.partial(generator_update, objective, D, task.tx_g, task.tx_info,
                                     fake=fake, g_vjp=g_vjp, g_stats_once=g_stats_once,
                                     real=images, condition=condition, context=context)
        if n_critic == 1:
            g, d, g_loss, extra, metrics = update_g(model.g, d, extra=extra)
        else:  # G waits but on every n-th step; only the D step's G forward moved its averages
            def wait(g, d, extra):
                return g.replace(batch_stats=g_stats_once), d, extra["g_loss"], extra, {}

            g, d, g_loss, extra, metrics = lax.cond(
                (step_in_epoch + 1) % n_critic == 0,
                lambda g, d, extra: update_g(g, d, extra=extra), wait, model.g, d, extra)
        if objective.n_critic is not None:  # a critic's state: the last G step's loss
            extra = {**extra, "g_loss": g_loss}
        metrics = {"D_loss": d_loss, "G_loss": g_loss, **metrics}
        for hook in hooks:
            extra, more = hook(extra, StepOutcome(g, d, d_aux, g_loss), config)
            metrics.update(more)
        return model.replace(g=g, d=d, extra=extra), metrics

    return step


# ----------------------------------------------------------------------------- helpers
def condition_kwargs(condition) -> dict:
    """D's keyword for a conditional GAN's one-hot categories (none without them)."""
    return {} if condition is None else {"condition": condition}


def _interleave(batches: list) -> jax.Array:
    return jnp.stack(batches, axis=1).reshape((-1,) + batches[0].shape[1:])


def grouped_apply(D: nn.Module, variables: dict, batches: list, condition=None):
    """D in training mode on equally sized ``batches`` in one pass, interleaved (image n of batch
    k is row n * len(batches) + k), each batch with its own BatchNorm statistics: D's outputs per
    batch, and the batch statistics after the running averages moved once per batch, in order.
    ``condition`` (CGAN's one-hot labels) is the same for every batch."""
    k = len(batches)
    kwargs = {} if condition is None else {"condition": _interleave([condition] * k)}
    out, mut = D.apply(variables, _interleave(batches), train=True, groups=k,
                       mutable=["batch_stats"], **kwargs)
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
