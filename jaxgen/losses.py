"""Losses as pure functions of logits; each returns a mean over the batch (nats per image).

GAN: the non-saturating binary cross-entropy of Goodfellow et al. (2014), as the reference
computes it with ``nn.BCELoss`` on sigmoid outputs: here on logits, for numerical stability.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def bce_with_logits(logits: jnp.ndarray, target: float) -> jnp.ndarray:
    """Mean binary cross-entropy of sigmoid(logits) against a constant target label."""
    return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()


def discriminator_loss(real_logits: jnp.ndarray, fake_logits: jnp.ndarray) -> jnp.ndarray:
    """BCE(D(x), 1) + BCE(D(G(z)), 0): the reference's D_loss."""
    return bce_with_logits(real_logits, 1.0) + bce_with_logits(fake_logits, 0.0)


def generator_loss(fake_logits: jnp.ndarray) -> jnp.ndarray:
    """BCE(D(G(z)), 1): the reference's (non-saturating) G_loss."""
    return bce_with_logits(fake_logits, 1.0)
