"""Losses and likelihood pieces as pure functions; all in nats.

GAN objectives, as pytorch-generative-model-collections computes them, each a mean over the batch:
the non-saturating binary cross-entropy of Goodfellow et al. (2014) (the reference's
``nn.BCELoss`` on sigmoid outputs; here on logits, for numerical stability), least squares (Mao et
al. 2017), the Wasserstein critic (Arjovsky et al. 2017), the gradient penalty (Gulrajani et al.
2017; Kodali et al. 2017), and the energy-based and boundary-equilibrium autoencoder losses (Zhao
et al. 2017; Berthelot et al. 2017).

VAE (Kingma & Welling 2014; Burda et al. 2016 for the importance-weighted bound): log-densities
and the KL are per image, summed over pixels or latent dimensions, with every constant included,
so that figures compare across runs and with the literature. The batch mean is the caller's.
"""

from __future__ import annotations

import math

import jax
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


def least_squares_discriminator_loss(real_out: jnp.ndarray,
                                     fake_out: jnp.ndarray) -> jnp.ndarray:
    """LSGAN: MSE(D(x), 1) + MSE(D(G(z)), 0) on D's raw output."""
    return jnp.mean(jnp.square(real_out - 1.0)) + jnp.mean(jnp.square(fake_out))


def least_squares_generator_loss(fake_out: jnp.ndarray) -> jnp.ndarray:
    """LSGAN: MSE(D(G(z)), 1)."""
    return jnp.mean(jnp.square(fake_out - 1.0))


def wasserstein_critic_loss(real_out: jnp.ndarray, fake_out: jnp.ndarray) -> jnp.ndarray:
    """WGAN: -E D(x) + E D(G(z)), the negated estimate of the Wasserstein-1 distance."""
    return -jnp.mean(real_out) + jnp.mean(fake_out)


def wasserstein_generator_loss(fake_out: jnp.ndarray) -> jnp.ndarray:
    """WGAN: -E D(G(z))."""
    return -jnp.mean(fake_out)


def hinge_discriminator_loss(real_out: jnp.ndarray, fake_out: jnp.ndarray) -> jnp.ndarray:
    """E max(0, 1 - D(x)) + E max(0, 1 + D(G(z))) on D's raw outputs."""
    return jnp.mean(jax.nn.relu(1.0 - real_out)) + jnp.mean(jax.nn.relu(1.0 + fake_out))


def hinge_generator_loss(fake_out: jnp.ndarray) -> jnp.ndarray:
    """-E D(G(z))."""
    return -jnp.mean(fake_out)


def relativistic_average_loss(first: jnp.ndarray, second: jnp.ndarray) -> jnp.ndarray:
    """The relativistic average GAN's loss on logits: BCE of ``first - mean(second)`` against 1
    plus BCE of ``second - mean(first)`` against 0. D's loss is (real, fake); G's (fake, real)."""
    return (bce_with_logits(first - jnp.mean(second), 1.0)
            + bce_with_logits(second - jnp.mean(first), 0.0))


def gradient_penalty(input_grads: jnp.ndarray) -> jnp.ndarray:
    """E (||grad_x f(x)||_2 - 1)^2 from the gradients (N, ...) of f at N points, one norm per
    point (WGAN-GP at interpolates, DRAGAN at perturbed real images). The weight is the
    caller's."""
    norms = jnp.sqrt(jnp.sum(jnp.square(input_grads.reshape(input_grads.shape[0], -1)), axis=1))
    return jnp.mean(jnp.square(norms - 1.0))


def mse(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Mean squared error over every element (PyTorch's ``nn.MSELoss``)."""
    return jnp.mean(jnp.square(a - b))


def energy_discriminator_loss(real_energy: jnp.ndarray, fake_energy: jnp.ndarray,
                              margin: float) -> jnp.ndarray:
    """EBGAN: D(x) + max(0, margin - D(G(z))), the energies being reconstruction MSEs."""
    return real_energy + jnp.maximum(margin - fake_energy, 0.0)


def pulling_away_term(codes: jnp.ndarray) -> jnp.ndarray:
    """EBGAN's repelling regulariser on a batch of codes (N, d): the mean squared cosine
    similarity of distinct pairs, sum_{i != j} (s_i . s_j / (|s_i| |s_j|))^2 / (N (N - 1)).

    pytorch-generative-model-collections' ``pullaway_loss`` divides every code by one L1 norm of
    the whole matrix (``torch.norm(embeddings, 1)``) instead of each row by its own L2 norm, so
    its term is not a cosine and shrinks with the batch; this is the term of Zhao et al. (2017).
    """
    unit = codes / jnp.linalg.norm(codes, axis=1, keepdims=True)
    similarity = jnp.square(unit @ unit.T)
    n = codes.shape[0]
    return (jnp.sum(similarity) - jnp.trace(similarity)) / (n * (n - 1))


def l1_reconstruction(recon: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """BEGAN's autoencoder loss: mean |D(x) - x| over every element."""
    return jnp.mean(jnp.abs(recon - x))


def class_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Mean softmax cross-entropy of (N, K) logits against (N,) integer labels: torch's
    ``CrossEntropyLoss`` (ACGAN's class terms, infoGAN's categorical code). Through a one-hot
    target, so its gradient needs no scatter."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return optax.softmax_cross_entropy(logits, targets).mean()


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
