"""Layers shared by the models, with the reference's initialisation.

The PyTorch reference initialises every conv, transposed conv and linear weight from N(0, 0.02)
and every bias to zero (``utils.initialize_weights`` of pytorch-generative-model-collections);
BatchNorm keeps scale 1 and offset 0. Its BatchNorm momentum 0.1 is Flax's momentum 0.9.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

weight_init = nn.initializers.normal(stddev=0.02)
bias_init = nn.initializers.zeros

Dense = functools.partial(nn.Dense, kernel_init=weight_init, bias_init=bias_init)
BATCHNORM_MOMENTUM = 0.9  # Flax's convention: running = m * running + (1 - m) * batch
BatchNorm = functools.partial(nn.BatchNorm, momentum=BATCHNORM_MOMENTUM, epsilon=1e-5)


class GroupedBatchNorm(nn.Module):
    """BatchNorm over ``groups`` sub-batches at once, each with its own batch statistics.

    Row ``n * groups + g`` of the input is sample ``n`` of sub-batch ``g``. Each sub-batch is
    normalised with its own statistics and the running averages move once per sub-batch, in
    order: what ``groups`` separate calls would compute, in one pass over the larger batch (the
    GAN's discriminator sees the real and the fake batch this way, with larger matrix products).
    Interleaving the sub-batches keeps a batch-sharded array batch-sharded.

    Same variables and running averages as :data:`BatchNorm` (``scale``, ``bias``; ``mean``,
    ``var``), so checkpoints are interchangeable. The batch variance is computed in two passes,
    mean((x - mean)^2), as PyTorch's BatchNorm does, not as E[x^2] - E[x]^2 (Flax's fast
    variance): on images with flat backgrounds, channels of tiny variance made the fast form's
    cancellation error visible in a single training step.
    """

    use_running_average: bool
    groups: int = 1
    momentum: float = BATCHNORM_MOMENTUM
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,))
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            xg = x.reshape((x.shape[0] // self.groups, self.groups) + x.shape[1:])
            axes = (0,) + tuple(range(2, xg.ndim - 1))
            mean = xg.mean(axes, keepdims=True)
            var = jnp.square(xg - mean).mean(axes, keepdims=True)
            if not self.is_initializing():
                m = self.momentum
                for g in range(self.groups):  # one running-average step per sub-batch, in order
                    ra_mean.value = m * ra_mean.value + (1 - m) * mean[0, g].reshape(features)
                    ra_var.value = m * ra_var.value + (1 - m) * var[0, g].reshape(features)
            y = (xg - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
            return y.reshape(x.shape)
        return (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias


_DN = ("NHWC", "HWIO", "NHWC")


def _plain_conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _canonical_conv(x, kernel, strides, padding):
    return _plain_conv(x, kernel, strides, padding)


def _canonical_conv_fwd(x, kernel, strides, padding):
    return _plain_conv(x, kernel, strides, padding), (x, kernel)


def _canonical_conv_bwd(strides, padding, residuals, dy):
    """Both gradients as NHWC/HWIO convolutions of explicitly transposed operands; the
    optimisation barriers keep XLA from folding the transposes back into the convolutions'
    dimension numbers."""
    x, kernel = residuals
    k = kernel.shape[:2]
    flipped = lax.optimization_barrier(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    dx_padding = []
    for axis in range(2):  # the transposed convolution of dy, dilated by the stride
        lo = k[axis] - 1 - padding[axis][0]
        size = (dy.shape[1 + axis] - 1) * strides[axis] + 1
        dx_padding.append((lo, x.shape[1 + axis] + k[axis] - 1 - size - lo))
    dx = lax.conv_general_dilated(dy, flipped, (1, 1), dx_padding, lhs_dilation=strides,
                                  dimension_numbers=_DN)
    # dkernel[i, j, c, o] = sum over n, h, w of x_padded[n, s h + i, s w + j, c] dy[n, h, w, o]:
    # a convolution of x with channels as its batch by dy with its batch as input channels.
    x_t = lax.optimization_barrier(x.transpose(3, 1, 2, 0))  # (C, H, W, N)
    dy_t = lax.optimization_barrier(dy.transpose(1, 2, 0, 3))  # (H', W', N, O)
    dk = lax.conv_general_dilated(x_t, dy_t, (1, 1), padding, rhs_dilation=strides,
                                  dimension_numbers=_DN)  # (C, >= kh, >= kw, O)
    return dx, dk.transpose(1, 2, 0, 3)[:k[0], :k[1]]


_canonical_conv.defvjp(_canonical_conv_fwd, _canonical_conv_bwd)


def canonical_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """``lax.conv_general_dilated`` whose gradients are computed as NHWC/HWIO convolutions.

    The same maths. XLA:CPU rewrites a convolution's gradients into the dimension order its fast
    kernels take, but not inside a loop: in a ``lax.scan`` over train steps
    (``--steps-per-call``) they stayed in the order autodiff gives them and ran as generic,
    far slower code (``docs/performance.md``). Written out here, the gradients are fast in both.
    Takes what ``flax.linen.Conv`` passes; anything but an undilated, ungrouped NHWC/HWIO
    convolution goes to ``lax.conv_general_dilated`` as it is."""
    canonical = (lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN)
                 == lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                               dimension_numbers or _DN))
    undilated = all(d == 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
    if (not canonical or not undilated or feature_group_count != 1 or precision is not None
            or kwargs or isinstance(padding, str)):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision, **kwargs)
    return _canonical_conv(lhs, rhs, tuple(window_strides),
                           tuple(tuple(int(p) for p in pair) for pair in padding))


def Conv4x4Down(features: int, name=None) -> nn.Conv:
    """4x4 stride-2 convolution with padding 1 (PyTorch ``Conv2d(c, features, 4, 2, 1)``)."""
    return nn.Conv(features, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                   kernel_init=weight_init, bias_init=bias_init, name=name,
                   conv_general_dilated=canonical_conv)


def conv_transpose_4x4_s2(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """(N, H, W, Cin) -> (N, 2H, 2W, Cout): a 4x4 stride-2 transposed convolution, padding 1.

    Written out: y[2u + a] = sum_t x[(2u + a + t - 2) / 2] * kernel[t] over the taps t that make
    the index an integer in range (per spatial axis). This is XLA's direct form.
    """
    return lax.conv_transpose(x, kernel, strides=(2, 2), padding=((2, 2), (2, 2)),
                              dimension_numbers=_DN)


def _subpixel_taps() -> tuple[np.ndarray, np.ndarray]:
    # Output phase a in {0, 1} of a 3x3 tap v in {0, 1, 2} reads 4x4 tap t = 2v - a (if in range).
    t = 2 * np.arange(3)[:, None] - np.arange(2)[None, :]  # (v, a)
    valid = (t >= 0) & (t <= 3)
    return np.clip(t, 0, 3), valid


def subpixel_kernel(kernel: jnp.ndarray) -> jnp.ndarray:
    """The 4x4 transposed-conv kernel (4, 4, Cin, Cout) as a 3x3 conv kernel (3, 3, Cin, 4 Cout).

    Output channel (a, b, c) of the 3x3 convolution computes output pixel (2u + a, 2v + b) of the
    transposed convolution; taps outside the 4x4 kernel are zero.
    """
    taps, valid = _subpixel_taps()
    cin, cout = kernel.shape[2:]
    k = kernel[taps][:, :, taps]  # (v1, a, v2, b, Cin, Cout)
    mask = valid[:, :, None, None] & valid[None, None, :, :]
    k = k * mask[..., None, None].astype(kernel.dtype)
    return k.transpose(0, 2, 4, 1, 3, 5).reshape(3, 3, cin, 4 * cout)


def conv_transpose_4x4_s2_subpixel(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """The same function as :func:`conv_transpose_4x4_s2`, as a 3x3 stride-1 conv to 4 Cout
    channels followed by depth-to-space. Same parameters and maths; on XLA:CPU its gradient is
    faster than the direct form's (``benchmarks/gan_step.py --forms sub-pixel,direct``)."""
    n, h, w, _ = x.shape
    cout = kernel.shape[-1]
    y = canonical_conv(x, subpixel_kernel(kernel), (1, 1), ((1, 1), (1, 1)))
    y = y.reshape(n, h, w, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * h, 2 * w, cout)


class ConvTranspose4x4Up(nn.Module):
    """4x4 stride-2 transposed convolution, padding 1 (PyTorch ``ConvTranspose2d(c, f, 4, 2, 1)``).

    ``subpixel`` picks the computation, not the model: both forms share the ``kernel`` and ``bias``
    parameters, so checkpoints are interchangeable.
    """

    features: int
    subpixel: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", weight_init, (4, 4, x.shape[-1], self.features))
        bias = self.param("bias", bias_init, (self.features,))
        up = conv_transpose_4x4_s2_subpixel if self.subpixel else conv_transpose_4x4_s2
        return up(x, kernel) + bias
