"""The infoGAN-style MNIST generator and discriminators of pytorch-generative-model-collections.

Architecture of ``GAN.py`` in pytorch-generative-model-collections (after Chen et al. 2016,
InfoGAN):
  G: FC 1024-BN-ReLU, FC 7x7x128-BN-ReLU, deconv 64 (4x4, s2)-BN-ReLU, deconv 1 (4x4, s2)-tanh
  D: conv 64 (4x4, s2)-LReLU(0.2), conv 128 (4x4, s2)-BN-LReLU, FC 1024-BN-LReLU, FC 1
``width`` scales every hidden layer's channels and units (:func:`scaled`): 1 is the reference's
architecture; a fraction of it trains the same design faster (quick tries, the test suite).
Images are NHWC in [-1, 1]. D returns logits: the sigmoid lives in the loss. Every network
computes in its ``dtype`` (float32 parameters; outputs float32) with convolutions in
``conv_forms`` (``jaxgen.models.layers.CONV_FORMS``). EBGAN and BEGAN
replace D with an autoencoder (:class:`EnergyDiscriminator`, :class:`BoundaryDiscriminator`).
The conditional GANs keep this G, fed z with its code (``CGAN.py``, ``ACGAN.py``:
z ‖ one-hot label; ``infoGAN.py``: z ‖ continuous codes ‖ one-hot category), and this D with label
planes beside the image (CGAN) or more outputs of its last layer (ACGAN, infoGAN).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxgen.models.layers import BatchNorm, Conv4x4Down, ConvTranspose4x4Up, Dense, GroupedBatchNorm


def scaled(features: int, width: float) -> int:
    """A hidden layer's size at ``width`` times the reference's (at least 1)."""
    return max(1, round(features * width))


class Generator(nn.Module):
    """z (N, z_dim) -> images (N, 28, 28, 1) in [-1, 1]."""

    image_channels: int = 1
    conv_forms: str = "canonical"  # how the transposed convolutions are computed; same params
    dtype: Any = jnp.float32
    width: float = 1.0

    @nn.compact
    def __call__(self, z: jnp.ndarray, train: bool) -> jnp.ndarray:
        channels = scaled(128, self.width)

        def norm():
            return BatchNorm(use_running_average=not train, dtype=self.dtype)

        def up(features):
            return ConvTranspose4x4Up(features, conv_forms=self.conv_forms, dtype=self.dtype)

        x = nn.relu(norm()(Dense(scaled(1024, self.width), dtype=self.dtype)(z)))
        x = nn.relu(norm()(Dense(7 * 7 * channels, dtype=self.dtype)(x)))
        x = x.reshape(x.shape[0], 7, 7, channels)
        x = nn.relu(norm()(up(scaled(64, self.width))(x)))
        x = up(self.image_channels)(x)
        return jnp.tanh(x).astype(jnp.float32)


class Discriminator(nn.Module):
    """images (N, 28, 28, C) -> logits (N,); with ``head_outputs`` > 0, (logits (N,), head
    (N, head_outputs)): more columns of the last layer (ACGAN's class logits, infoGAN's Q head).

    ``condition`` (N, K), e.g. one-hot labels, enters as K constant planes beside the image's
    channels (CGAN). ``groups`` > 1 runs D on that many batches at once, interleaved (row
    ``n * groups + g`` is image ``n`` of batch ``g``), with BatchNorm statistics per batch: the
    same as ``groups`` separate calls in order, with larger matrix products
    (:class:`GroupedBatchNorm`).
    """

    head_outputs: int = 0
    conv_forms: str = "canonical"
    dtype: Any = jnp.float32
    width: float = 1.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, groups: int = 1,
                 condition: Optional[jnp.ndarray] = None):
        def norm(name):
            return GroupedBatchNorm(use_running_average=not train, groups=groups, name=name)

        def down(features):
            return Conv4x4Down(features, conv_forms=self.conv_forms, dtype=self.dtype)

        def lrelu(v):
            return nn.leaky_relu(v, negative_slope=0.2)

        if condition is not None:
            planes = jnp.broadcast_to(condition[:, None, None, :].astype(x.dtype),
                                      x.shape[:3] + condition.shape[-1:])
            x = jnp.concatenate([x, planes], axis=-1)
        x = lrelu(down(scaled(64, self.width))(x.astype(self.dtype)))
        x = lrelu(norm("BatchNorm_0")(down(scaled(128, self.width))(x)))
        x = x.reshape(x.shape[0], -1)
        x = lrelu(norm("BatchNorm_1")(Dense(scaled(1024, self.width), dtype=self.dtype)(x)))
        out = Dense(1 + self.head_outputs, dtype=self.dtype)(x).astype(jnp.float32)
        if self.head_outputs == 0:
            return out[:, 0]
        return out[:, 0], out[:, 1:]


class EnergyDiscriminator(nn.Module):
    """EBGAN's autoencoder D: images (N, 28, 28, C) -> (reconstructions (N, 28, 28, C), codes
    (N, 32)).

    ``EBGAN.py``: conv 64 (4x4, s2)-ReLU, FC 32 (the code: no BN or ReLU, as the pulling-away
    term reads it), FC 64x14x14-BN-ReLU, deconv C (4x4, s2), no output non-linearity. ``groups``
    as for :class:`Discriminator`.
    """

    image_channels: int = 1
    code_dim: int = 32  # the code is not scaled by width: the pulling-away term reads it
    conv_forms: str = "canonical"
    dtype: Any = jnp.float32
    width: float = 1.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, groups: int = 1):
        channels = scaled(64, self.width)
        x = nn.relu(Conv4x4Down(channels, conv_forms=self.conv_forms, dtype=self.dtype)(
            x.astype(self.dtype)))
        code = Dense(self.code_dim, dtype=self.dtype)(x.reshape(x.shape[0], -1))
        x = Dense(14 * 14 * channels, dtype=self.dtype)(code)
        x = GroupedBatchNorm(use_running_average=not train, groups=groups, name="BatchNorm_0")(x)
        x = nn.relu(x).reshape(x.shape[0], 14, 14, channels)
        out = ConvTranspose4x4Up(self.image_channels, conv_forms=self.conv_forms,
                                 dtype=self.dtype)(x)
        return out.astype(jnp.float32), code.astype(jnp.float32)


class BoundaryDiscriminator(nn.Module):
    """BEGAN's autoencoder D: images (N, 28, 28, C) -> reconstructions (N, 28, 28, C).

    ``BEGAN.py``: conv 64 (4x4, s2)-ReLU, FC 32, FC 64x14x14 (no normalisation or activation
    between them), deconv C (4x4, s2), no output non-linearity. Without BatchNorm, each image's
    reconstruction depends on that image alone; ``groups`` is accepted and changes nothing.
    """

    image_channels: int = 1
    conv_forms: str = "canonical"
    dtype: Any = jnp.float32
    width: float = 1.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, groups: int = 1) -> jnp.ndarray:
        del train, groups  # no batch statistics
        channels = scaled(64, self.width)
        x = nn.relu(Conv4x4Down(channels, conv_forms=self.conv_forms, dtype=self.dtype)(
            x.astype(self.dtype)))
        code = Dense(32, dtype=self.dtype)(x.reshape(x.shape[0], -1))  # as EBGAN's code
        x = Dense(14 * 14 * channels, dtype=self.dtype)(code)
        out = ConvTranspose4x4Up(self.image_channels, conv_forms=self.conv_forms,
                                 dtype=self.dtype)(x.reshape(x.shape[0], 14, 14, channels))
        return out.astype(jnp.float32)
