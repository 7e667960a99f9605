"""What a trained VAE's latent space shows: posterior means (and variances), decoder means,
reconstructions and straight lines between images."""

from __future__ import annotations

import functools

import jax
import numpy as np

from jaxgen.train.vae import VAETask, fixed_targets


def encode_means(task: VAETask, params, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Posterior means mu(x) of uint8 images (seen as ``fixed_targets``), on the default device."""
    x = fixed_targets(task, images)
    fn = _encode_means_fn(task)
    return np.concatenate([np.asarray(fn(params, x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)])


def encode_posteriors(task: VAETask, params, images: np.ndarray,
                      batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(mu, log_var) of q(z|x) for uint8 images (seen as ``fixed_targets``), each (N, latent)."""
    x = fixed_targets(task, images)
    fn = _encode_fn(task)
    parts = [fn(params, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return (np.concatenate([np.asarray(p[0]) for p in parts]),
            np.concatenate([np.asarray(p[1]) for p in parts]))


def decode_means(task: VAETask, params, z: np.ndarray) -> np.ndarray:
    """Decoder means E[x | z] in [-1, 1] of latents z (N, latent_dim)."""
    return np.asarray(_decode_means_fn(task)(params, z))


@functools.lru_cache(maxsize=8)
def _encode_means_fn(task: VAETask):
    """Jitted once per task (a retrace per call would recompile each time)."""
    return jax.jit(lambda p, x: task.encode(p, x)[0])


@functools.lru_cache(maxsize=8)
def _encode_fn(task: VAETask):
    return jax.jit(lambda p, x: task.encode(p, x))


@functools.lru_cache(maxsize=8)
def _decode_means_fn(task: VAETask):
    return jax.jit(lambda p, z: task.mean_image(task.decode(p, z)))


def reconstructions(task: VAETask, params, images: np.ndarray) -> np.ndarray:
    """The decoder means at the posterior means of uint8 images, in [-1, 1]."""
    return decode_means(task, params, encode_means(task, params, images))


def interpolations(task: VAETask, params, start: np.ndarray, end: np.ndarray,
                   steps: int = 10) -> np.ndarray:
    """Decoded straight lines in latent space between the posterior means of paired uint8 images:
    (pairs * steps) images in [-1, 1], one row of ``steps`` per pair."""
    za, zb = encode_means(task, params, start), encode_means(task, params, end)
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
    z = (1 - t) * za[:, None] + t * zb[:, None]
    return decode_means(task, params, z.reshape(-1, za.shape[-1]))
