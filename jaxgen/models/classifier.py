"""A small LeNet-like CNN: the classifier whose features and class probabilities score samples.

    conv 32 (3x3)-ReLU-maxpool 2, conv 64 (3x3)-ReLU-maxpool 2, FC feature_dim-ReLU (the features),
    dropout, FC num_classes (logits)

The penultimate layer is the feature space of the Fréchet distance and of precision/recall, as
Inception-v3's pool layer is for FID on natural images (``jaxgen.metrics``).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class Classifier(nn.Module):
    """images (N, 28, 28, C) in [-1, 1] -> logits (N, num_classes)."""

    num_classes: int = 10
    feature_dim: int = 128
    dropout_rate: float = 0.5

    def setup(self):
        self.conv1 = nn.Conv(32, (3, 3))
        self.conv2 = nn.Conv(64, (3, 3))
        self.embed = nn.Dense(self.feature_dim)
        self.dropout = nn.Dropout(self.dropout_rate)
        self.head = nn.Dense(self.num_classes)

    def features(self, x: jnp.ndarray) -> jnp.ndarray:
        """The penultimate activations (N, feature_dim), after the ReLU."""
        x = nn.max_pool(nn.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nn.max_pool(nn.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        return nn.relu(self.embed(x.reshape(x.shape[0], -1)))

    def features_and_logits(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Inference mode (no dropout): both outputs from one forward pass."""
        features = self.features(x)
        return features, self.head(features)

    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Logits; in training mode dropout needs the ``"dropout"`` rng."""
        return self.head(self.dropout(self.features(x), deterministic=not train))
