"""Variational autoencoder networks (Kingma & Welling 2014): a Gaussian encoder and a decoder.

The encoder maps an image x in [0, 1] to the mean and log-variance of q(z|x) = N(mu, diag sigma^2).
The decoder maps a latent z to one number per pixel: Bernoulli logits, or the mean of a Gaussian of
fixed variance; which, is the likelihood's business (``jaxgen.losses``), not the network's.

Two architectures:
  mlp:  784 - hidden... - 2 x latent, and latent - reversed(hidden) - 784 (Burda et al. 2016 use
        784-200-200-50 with tanh)
  conv: conv 32 (4x4, s2) - conv 64 (4x4, s2) - FC hidden[-1] - 2 x latent, and
        latent - FC hidden[-1] - FC 7x7x64 - deconv 32 (4x4, s2) - deconv 1 (4x4, s2)
Parameters use Flax's default initialisation (LeCun normal, zero biases).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxgen.models.layers import ConvTranspose4x4Up

ARCHITECTURES = ("mlp", "conv")
ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}
IMAGE_SHAPE = (28, 28, 1)


class Encoder(nn.Module):
    """x (N, 28, 28, 1) in [0, 1] -> (mu, log_var), each (N, latent_dim)."""

    latent_dim: int
    hidden: Sequence[int] = (400, 400)
    architecture: str = "mlp"
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        act = ACTIVATIONS[self.activation]
        h = x
        if self.architecture == "conv":
            for features in (32, 64):
                h = act(nn.Conv(features, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))(h))
            hidden = self.hidden[-1:]
        else:
            hidden = self.hidden
        h = h.reshape((h.shape[0], -1))
        for width in hidden:
            h = act(nn.Dense(width)(h))
        out = nn.Dense(2 * self.latent_dim)(h)
        mu, log_var = jnp.split(out, 2, axis=-1)
        return mu, log_var


class Decoder(nn.Module):
    """z (..., latent_dim) -> per-pixel outputs (..., 28, 28, 1): logits or Gaussian means."""

    hidden: Sequence[int] = (400, 400)
    architecture: str = "mlp"
    activation: str = "relu"

    @nn.compact
    def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
        act = ACTIVATIONS[self.activation]
        lead = z.shape[:-1]
        h = z.reshape((-1, z.shape[-1]))
        if self.architecture == "conv":
            h = act(nn.Dense(self.hidden[-1])(h))
            h = act(nn.Dense(7 * 7 * 64)(h)).reshape((-1, 7, 7, 64))
            h = act(ConvTranspose4x4Up(32)(h))
            out = ConvTranspose4x4Up(IMAGE_SHAPE[-1])(h)
        else:
            for width in reversed(tuple(self.hidden)):
                h = act(nn.Dense(width)(h))
            out = nn.Dense(IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2])(h)
        return out.reshape(lead + IMAGE_SHAPE)


class VAE(nn.Module):
    """Encoder and decoder under one parameter tree: ``{"encoder": ..., "decoder": ...}``.

    Use ``apply(..., method=VAE.encode)`` and ``apply(..., method=VAE.decode)``; the sampling of
    z and the objective live outside (``jaxgen.train.vae``), so a key is never hidden in here.
    """

    latent_dim: int
    hidden: Sequence[int] = (400, 400)
    architecture: str = "mlp"
    activation: str = "relu"

    def setup(self):
        self.encoder = Encoder(self.latent_dim, self.hidden, self.architecture, self.activation)
        self.decoder = Decoder(self.hidden, self.architecture, self.activation)

    def encode(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        return self.encoder(x)

    def decode(self, z: jnp.ndarray) -> jnp.ndarray:
        return self.decoder(z)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Decoder outputs at the posterior means (used to initialise both halves)."""
        mu, _ = self.encode(x)
        return self.decode(mu)
