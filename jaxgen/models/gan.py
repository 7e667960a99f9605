"""The infoGAN-style MNIST generator and discriminators of pytorch-generative-model-collections.

Architecture of ``GAN.py`` in pytorch-generative-model-collections (after Chen et al. 2016,
InfoGAN):
  G: FC 1024-BN-ReLU, FC 7x7x128-BN-ReLU, deconv 64 (4x4, s2)-BN-ReLU, deconv 1 (4x4, s2)-tanh
  D: conv 64 (4x4, s2)-LReLU(0.2), conv 128 (4x4, s2)-BN-LReLU, FC 1024-BN-LReLU, FC 1
Images are NHWC in [-1, 1]. D returns logits: the sigmoid lives in the loss. EBGAN and BEGAN
replace D with an autoencoder (:class:`EnergyDiscriminator`, :class:`BoundaryDiscriminator`).
The conditional GANs keep this G, fed z with its code (``CGAN.py``, ``ACGAN.py``:
z ‖ one-hot label; ``infoGAN.py``: z ‖ continuous codes ‖ one-hot category), and this D with label
planes beside the image (CGAN) or more outputs of its last layer (ACGAN, infoGAN).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxgen.models.layers import BatchNorm, Conv4x4Down, ConvTranspose4x4Up, Dense, GroupedBatchNorm


class Generator(nn.Module):
    """z (N, z_dim) -> images (N, 28, 28, 1) in [-1, 1]."""

    image_channels: int = 1
    subpixel: bool = True  # how the transposed convolutions are computed; same parameters

    @nn.compact
    def __call__(self, z: jnp.ndarray, train: bool) -> jnp.ndarray:
        def norm():
            return BatchNorm(use_running_average=not train)

        x = nn.relu(norm()(Dense(1024)(z)))
        x = nn.relu(norm()(Dense(7 * 7 * 128)(x)))
        x = x.reshape(x.shape[0], 7, 7, 128)
        x = nn.relu(norm()(ConvTranspose4x4Up(64, subpixel=self.subpixel)(x)))
        x = ConvTranspose4x4Up(self.image_channels, subpixel=self.subpixel)(x)
        return jnp.tanh(x)


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

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, groups: int = 1,
                 condition: Optional[jnp.ndarray] = None):
        def norm(name):
            return GroupedBatchNorm(use_running_average=not train, groups=groups, name=name)

        def lrelu(v):
            return nn.leaky_relu(v, negative_slope=0.2)

        if condition is not None:
            planes = jnp.broadcast_to(condition[:, None, None, :].astype(x.dtype),
                                      x.shape[:3] + condition.shape[-1:])
            x = jnp.concatenate([x, planes], axis=-1)
        x = lrelu(Conv4x4Down(64)(x))
        x = lrelu(norm("BatchNorm_0")(Conv4x4Down(128)(x)))
        x = x.reshape(x.shape[0], -1)
        x = lrelu(norm("BatchNorm_1")(Dense(1024)(x)))
        out = Dense(1 + self.head_outputs)(x)
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
    code_dim: int = 32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, groups: int = 1):
        x = nn.relu(Conv4x4Down(64)(x))
        code = Dense(self.code_dim)(x.reshape(x.shape[0], -1))
        x = Dense(14 * 14 * 64)(code)
        x = GroupedBatchNorm(use_running_average=not train, groups=groups, name="BatchNorm_0")(x)
        x = nn.relu(x).reshape(x.shape[0], 14, 14, 64)
        return ConvTranspose4x4Up(self.image_channels)(x), code


class BoundaryDiscriminator(nn.Module):
    """BEGAN's autoencoder D: images (N, 28, 28, C) -> reconstructions (N, 28, 28, C).

    ``BEGAN.py``: conv 64 (4x4, s2)-ReLU, FC 32, FC 64x14x14 (no normalisation or activation
    between them), deconv C (4x4, s2), no output non-linearity. Without BatchNorm, each image's
    reconstruction depends on that image alone; ``groups`` is accepted and changes nothing.
    """

    image_channels: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, groups: int = 1) -> jnp.ndarray:
        del train, groups  # no batch statistics
        x = nn.relu(Conv4x4Down(64)(x))
        code = Dense(32)(x.reshape(x.shape[0], -1))
        x = Dense(14 * 14 * 64)(code)
        return ConvTranspose4x4Up(self.image_channels)(x.reshape(x.shape[0], 14, 14, 64))
