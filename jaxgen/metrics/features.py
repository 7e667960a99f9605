"""Classifier features and class probabilities of many images: batched, jitted, sharded.

Images go through the classifier in fixed-size batches split over the mesh's devices (the last
batch padded), so one program is compiled whatever the number of images.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import parallel, viz

# (params, images in [-1, 1]) -> (features (N, D), logits (N, classes))
FeaturesFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]


class FeatureExtractor:
    """A classifier's ``embed(images) -> (features, probabilities)`` over ``mesh``, from its
    ``features_and_logits(params, images)`` function: any network with a feature layer and
    class logits will do. ``dataset`` is the one it was trained on; ``directory`` and ``epoch``
    say where it came from, for reports."""

    def __init__(self, features_and_logits: FeaturesFn, params: Any, mesh, *, dataset: str,
                 feature_dim: int, directory: Optional[str] = None,
                 epoch: Optional[int] = None, batch_size: int = 512):
        self.params = params
        self.mesh = mesh
        self.dataset = dataset
        self.feature_dim = feature_dim
        self.directory = directory
        self.epoch = epoch
        self.batch_size = math.ceil(batch_size / mesh.size) * mesh.size

        def apply(params, images):
            if images.dtype == jnp.uint8:
                images = images.astype(jnp.float32) / 127.5 - 1.0  # as in training
            features, logits = features_and_logits(params, images)
            return features, jax.nn.softmax(logits, axis=-1)

        repl = parallel.replicated(mesh)
        self._apply = jax.jit(apply, in_shardings=(repl, parallel.batch_sharded(mesh)),
                              out_shardings=(repl, repl),
                              compiler_options=parallel.compiler_options(mesh))

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``images`` (N, 28, 28, 1), uint8 in [0, 255] or float in [-1, 1] -> the feature layer
        (N, feature_dim) and the class probabilities (N, classes), float64 numpy."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            images = images.astype(np.float32)
        sharding = parallel.batch_sharded(self.mesh)
        features, probs = [], []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            n = len(batch)
            if n < self.batch_size:
                pad = np.zeros((self.batch_size - n,) + batch.shape[1:], batch.dtype)
                batch = np.concatenate([batch, pad])
            # Every process holds all images: each puts the rows of its own devices.
            x = jax.make_array_from_callback(batch.shape, sharding, batch.__getitem__)
            f, p = parallel.to_host(self._apply(self.params, x))
            features.append(f[:n])
            probs.append(p[:n])
        return (np.concatenate(features).astype(np.float64),
                np.concatenate(probs).astype(np.float64))


def quantize(images: np.ndarray) -> np.ndarray:
    """Samples in [-1, 1] -> uint8, as saved to a PNG: the classifier only ever saw 256 levels."""
    return viz.to_uint8(images)
