"""An exponential moving average of G's weights (``--g-ema DECAY``), for every GAN.

    g_ema <- decay * g_ema + (1 - decay) * g      after every step, from G's initial weights

It is a step hook (``jaxgen.train.gan_step``) and one entry of the model's state, ``g_ema``, so
it is checkpointed and resumed with the run; :meth:`~jaxgen.train.gan.GANTask.sampling_network`
gives it to the samples, the per-epoch grids and the evaluation. G's BatchNorm running averages
are the live G's (the average has weights only, and is not bias-corrected: after s steps a
share decay^s of it is still G's initial weights). It moves on every step, so with a critic
(n_critic > 1) it also moves on the steps where G waits: per G update its decay is
decay^n_critic. Yazici et al. (2019) and Karras et al. (2018) sample from such an average;
0.999 is their usual decay at this batch size.
"""

from __future__ import annotations

import jax

from jaxgen.train.gan_step import StepHook, StepOutcome


def init(g_params):
    """The average's start: G's initial weights (a copy with the same shapes and dtypes)."""
    return jax.tree.map(lambda p: p.copy(), g_params)


def step_hook(decay: float) -> StepHook:
    """The hook that moves the average towards G's weights after each step."""
    def after_step(extra: dict, outcome: StepOutcome, config):
        average = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, extra["g_ema"],
                               outcome.g.params)
        return {**extra, "g_ema": average}, {}

    return after_step
