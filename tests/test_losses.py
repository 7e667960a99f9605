import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import losses


def _bce(p, y):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_discriminator_loss_matches_hand_computed_bce():
    real, fake = jnp.array([2.0, -1.0]), jnp.array([0.5, -3.0])
    def sig(v):
        return 1 / (1 + math.exp(-v))
    expected = (np.mean([_bce(sig(2.0), 1), _bce(sig(-1.0), 1)])
                + np.mean([_bce(sig(0.5), 0), _bce(sig(-3.0), 0)]))
    assert float(losses.discriminator_loss(real, fake)) == pytest.approx(expected, rel=1e-6)


def test_generator_loss_is_non_saturating_bce_against_ones():
    fake = jnp.array([0.0, 1.0, -2.0])
    def sig(v):
        return 1 / (1 + math.exp(-v))
    expected = np.mean([_bce(sig(v), 1) for v in (0.0, 1.0, -2.0)])
    assert float(losses.generator_loss(fake)) == pytest.approx(expected, rel=1e-6)
    assert float(losses.generator_loss(jnp.zeros(4))) == pytest.approx(math.log(2), rel=1e-6)


def test_bce_is_stable_for_extreme_logits():
    value = losses.generator_loss(jnp.array([-200.0]))
    assert np.isfinite(value) and float(value) == pytest.approx(200.0, rel=1e-6)
