"""Losses and likelihood pieces as pure functions; all in nats.

GAN: the non-saturating binary cross-entropy of Goodfellow et al. (2014), as the reference
computes it with ``nn.BCELoss`` on sigmoid outputs: here on logits, for numerical stability.
These return a mean over the batch.

VAE (Kingma & Welling 2014; Burda et al. 2016 for the importance-weighted bound): log-densities
and the KL are per image, summed over pixels or latent dimensions, with every constant included,
so that figures compare across runs and with the literature. The batch mean is the caller's.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax
from jax.scipy.special import logsumexp

LOG_2PI = math.log(2 * math.pi)


def bce_with_logits(logits: jnp.ndarray, target: float) -> jnp.ndarray:
    """Mean binary cross-entropy of sigmoid(logits) against a constant target label."""
    return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()


def discriminator_loss(real_logits: jnp.ndarray, fake_logits: jnp.ndarray) -> jnp.ndarray:
    """BCE(D(x), 1) + BCE(D(G(z)), 0): the reference's D_loss."""
    return bce_with_logits(real_logits, 1.0) + bce_with_logits(fake_logits, 0.0)


def generator_loss(fake_logits: jnp.ndarray) -> jnp.ndarray:
    """BCE(D(G(z)), 1): the reference's (non-saturating) G_loss."""
    return bce_with_logits(fake_logits, 1.0)


# ----------------------------------------------------------------------------- VAE pieces
def gaussian_kl_to_standard(mu: jnp.ndarray, log_var: jnp.ndarray) -> jnp.ndarray:
    """KL(N(mu, diag exp(log_var)) || N(0, I)) in closed form, summed over the last axis:
    1/2 sum(sigma^2 + mu^2 - 1 - log sigma^2)."""
    return 0.5 * jnp.sum(jnp.exp(log_var) + jnp.square(mu) - 1.0 - log_var, axis=-1)


def diagonal_gaussian_log_density(z: jnp.ndarray, mu: jnp.ndarray,
                                  log_var: jnp.ndarray) -> jnp.ndarray:
    """log N(z; mu, diag exp(log_var)), summed over the last axis."""
    return -0.5 * jnp.sum(LOG_2PI + log_var + jnp.square(z - mu) * jnp.exp(-log_var), axis=-1)


def standard_normal_log_density(z: jnp.ndarray) -> jnp.ndarray:
    """log N(z; 0, I), summed over the last axis."""
    return -0.5 * jnp.sum(LOG_2PI + jnp.square(z), axis=-1)


def bernoulli_log_likelihood(x: jnp.ndarray, logits: jnp.ndarray) -> jnp.ndarray:
    """log p(x | logits) for binary x, summed over the image axes (H, W, C)."""
    return -jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=(-3, -2, -1))


def gaussian_log_likelihood(x: jnp.ndarray, mean: jnp.ndarray, sigma: float) -> jnp.ndarray:
    """log N(x; mean, sigma^2 I) with a fixed std ``sigma``, summed over the image axes (H, W, C):
    -1/2 sum((x - mean)^2 / sigma^2) - D log sigma - D/2 log 2 pi."""
    per_pixel = -0.5 * jnp.square((x - mean) / sigma) - math.log(sigma) - 0.5 * LOG_2PI
    return jnp.sum(per_pixel, axis=(-3, -2, -1))


def importance_weighted_bound(log_weights: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """log (1/k sum_k w_k) from log w_k = log p(x, z_k) - log q(z_k | x), over ``axis``:
    Burda et al.'s k-sample bound on log p(x) (k = 1: the ELBO)."""
    k = log_weights.shape[axis]
    return logsumexp(log_weights, axis=axis) - math.log(k)
