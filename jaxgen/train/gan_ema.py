"""An exponential moving average of G's weights (``--g-ema DECAY``), for every GAN.

After the t-th step, with g_s G's weights after step s,

    g_ema = sum_s decay^(t-s) g_s / sum_s decay^(t-s)        (s = 1..t)

the average with exponentially decaying weights of the weights G has had, normalised, so that
none of the weight rests on G's initialisation (Adam's bias correction): early on it averages
over the few steps there are. It is computed as a running update,
g_ema <- g_ema + w_t (g_t - g_ema) with w_t = (1 - decay) / (1 - decay^t).

It is a step hook (``jaxgen.train.gan_step``) and two entries of the model's state, ``g_ema``
and ``g_ema_updates``, so it is checkpointed and resumed with the run;
:meth:`~jaxgen.train.gan.GANTask.sampling_network` gives it to the samples, the per-epoch grids
and the evaluation, with BatchNorm statistics of its own
(:meth:`~jaxgen.train.gan.GANTask.standing_statistics`; the live G's belong to other weights).
It moves on every step, so with a critic (n_critic > 1) it also moves on the steps where
G waits: per G update its decay is decay^n_critic. Yazici et al. (2019) and Karras et al. (2018)
sample from such an average; 0.999 is their usual decay at this batch size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen.train.gan_step import StepHook, StepOutcome


def init(g_params) -> dict:
    """The average's state before the first step: G's initial weights (replaced by the first
    step's, whose weight is 1) and the count of updates."""
    return {"g_ema": jax.tree.map(lambda p: p.copy(), g_params),
            "g_ema_updates": jnp.zeros((), jnp.int32)}


def step_hook(decay: float) -> StepHook:
    """The hook that moves the average towards G's weights after each step."""
    def after_step(extra: dict, outcome: StepOutcome, config):
        t = extra["g_ema_updates"] + 1
        w = (1.0 - decay) / (1.0 - jnp.power(jnp.float32(decay), t.astype(jnp.float32)))
        average = jax.tree.map(lambda e, p: e + w * (p - e), extra["g_ema"], outcome.g.params)
        return {**extra, "g_ema": average, "g_ema_updates": t}, {}

    return after_step
