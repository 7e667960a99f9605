"""Layers shared by the models, with the reference's initialisation.

The PyTorch reference initialises every conv, transposed conv and linear weight from N(0, 0.02)
and every bias to zero (``utils.initialize_weights`` of pytorch-generative-model-collections);
BatchNorm keeps scale 1 and offset 0 (a GAN's ``batchnorm_scale_init`` "uniform" redraws the
scales at init: ``jaxgen.train.gan.uniform_batchnorm_scales``). Its BatchNorm momentum 0.1 is
Flax's momentum 0.9.

Every layer computes in its ``dtype`` (float32, or bfloat16 under a GAN's ``--dtype bfloat16``)
with float32 parameters; BatchNorm's statistics are float32 whatever the dtype. The
convolutions come in two forms of the same maths (:data:`CONV_FORMS`): ``canonical``, written for
XLA:CPU (sub-pixel transposed convolutions, gradients as NHWC/HWIO convolutions:
:func:`canonical_conv`), and ``xla``, XLA's own (``lax.conv_transpose`` and autodiff's
gradients). Parameters are the same in both, so checkpoints are interchangeable.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

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
        dtype = x.dtype
        x = x.astype(jnp.float32)  # statistics and normalisation in float32 for every dtype
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
            return y.reshape(x.shape).astype(dtype)
        return ((x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias).astype(dtype)


_DN = ("NHWC", "HWIO", "NHWC")


class _Geometry(NamedTuple):
    """One convolution's static shape: what its two gradients need besides their operands."""
    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    lhs_dilation: tuple[int, int]
    rhs_dilation: tuple[int, int]
    input_hw: tuple[int, int]  # the input's height and width
    kernel_hw: tuple[int, int]


def _canonical(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation):
    # The barrier keeps XLA from folding a transpose or a reversal that made an operand into
    # the convolution's dimension numbers, which would take it out of the fast order.
    lhs, rhs = lax.optimization_barrier((lhs, rhs))
    return lax.conv_general_dilated(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers=_DN)


def _dilated(size: int, dilation: int) -> int:
    return 0 if size == 0 else 1 + dilation * (size - 1)


def _sizes(g: _Geometry, output_hw) -> tuple[list, list, list, list]:
    x = [_dilated(n, d) for n, d in zip(g.input_hw, g.lhs_dilation)]
    k = [_dilated(n, d) for n, d in zip(g.kernel_hw, g.rhs_dilation)]
    y = [_dilated(n, d) for n, d in zip(output_hw, g.strides)]
    return x, k, y, [pair[0] for pair in g.padding]


# A convolution y = conv(x, k) and its two gradients, dx = input_grad(dy, k) and
# dk = kernel_grad(x, dy), are three bilinear maps, and the gradient of each with respect to
# either operand is one of the three: autodiff at any order (a gradient penalty's second
# derivatives) stays among them, each an NHWC/HWIO convolution with a kernel no larger than
# its input. (Left to autodiff, XLA swaps the operands of some second derivatives, which then
# run out of the fast order.) The paddings are those of JAX's own transpose rules.

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(g: _Geometry, x, k):
    return _canonical(x, k, g.strides, g.padding, g.lhs_dilation, g.rhs_dilation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv_input_grad(g: _Geometry, dy, k):
    """dx: dy, dilated by the strides, convolved with the flipped kernel (its input and output
    channels swapped); the input's dilation becomes the stride."""
    x, kd, y, lo = _sizes(g, dy.shape[1:3])
    padding = tuple((kn - p - 1, xn - y_n + p) for kn, p, xn, y_n in zip(kd, lo, x, y))
    flipped = jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2)
    return _canonical(dy, flipped, g.lhs_dilation, padding, g.strides, g.rhs_dilation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv_kernel_grad(g: _Geometry, x, dy):
    """dk[i, j, c, o] = sum over n, h, w of x[n, ., ., c] dy[n, h, w, o]: x with its channels as
    the batch, convolved with dy with its batch as the input channels."""
    xd, kd, y, lo = _sizes(g, dy.shape[1:3])
    padding = tuple((p, y_n - xn + kn - p - 1) for p, y_n, xn, kn in zip(lo, y, xd, kd))
    dk = _canonical(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), g.rhs_dilation,
                    padding, g.lhs_dilation, g.strides)  # (C, kh, kw, O)
    return dk.transpose(1, 2, 0, 3)


# Each forward pass calls the function itself, so that differentiated again it keeps these rules.
_conv.defvjp(lambda g, x, k: (_conv(g, x, k), (x, k)),
             lambda g, res, ct: (_conv_input_grad(g, ct, res[1]),
                                 _conv_kernel_grad(g, res[0], ct)))
_conv_input_grad.defvjp(lambda g, dy, k: (_conv_input_grad(g, dy, k), (dy, k)),
                        lambda g, res, ct: (_conv(g, ct, res[1]),
                                            _conv_kernel_grad(g, ct, res[0])))
_conv_kernel_grad.defvjp(lambda g, x, dy: (_conv_kernel_grad(g, x, dy), (x, dy)),
                         lambda g, res, ct: (_conv_input_grad(g, res[1], ct),
                                             _conv(g, res[0], ct)))


def canonical_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """``lax.conv_general_dilated`` whose gradients, at every order, are computed as NHWC/HWIO
    convolutions.

    The same maths. XLA:CPU rewrites a convolution's gradients into the dimension order its fast
    kernels take, but not inside a loop: in a ``lax.scan`` over train steps
    (``--steps-per-call``) they stayed in the order autodiff gives them and ran as generic,
    far slower code (``docs/performance.md``); so did the second derivatives of a gradient
    penalty (WGAN_GP, DRAGAN). Written out here, the gradients are fast in both. Takes what
    ``flax.linen.Conv`` passes; anything but an ungrouped NHWC/HWIO convolution with explicit
    padding goes to ``lax.conv_general_dilated`` as it is."""
    canonical = (lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN)
                 == lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                               dimension_numbers or _DN))
    if (not canonical or feature_group_count != 1 or precision is not None or kwargs
            or isinstance(padding, str)):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision, **kwargs)
    pair = lambda values: tuple(int(v) for v in values)  # noqa: E731
    geometry = _Geometry(pair(window_strides), tuple(pair(p) for p in padding),
                         pair(lhs_dilation or (1, 1)), pair(rhs_dilation or (1, 1)),
                         pair(lhs.shape[1:3]), pair(rhs.shape[:2]))
    return _conv(geometry, lhs, rhs)


CONV_FORMS = ("canonical", "xla")


def Conv4x4Down(features: int, name=None, conv_forms: str = "canonical",
                dtype=jnp.float32) -> nn.Conv:
    """4x4 stride-2 convolution with padding 1 (PyTorch ``Conv2d(c, features, 4, 2, 1)``), in
    ``conv_forms`` (:data:`CONV_FORMS`)."""
    conv = (canonical_conv if resolve_conv_forms(conv_forms) == "canonical"
            else lax.conv_general_dilated)
    return nn.Conv(features, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                   kernel_init=weight_init, bias_init=bias_init, name=name, dtype=dtype,
                   conv_general_dilated=conv)


# What ``auto`` means when compiling for an accelerator (GPU, TPU); for the CPU: canonical.
ACCELERATOR_CONV_FORMS = "xla"


def resolve_conv_forms(conv_forms: str) -> str:
    """``conv_forms`` with ``auto`` resolved for the platform being compiled for
    (:func:`compiling_platform`): ``canonical`` on the CPU, whose compiler it was written for,
    :data:`ACCELERATOR_CONV_FORMS` elsewhere. The layers resolve it as they are traced."""
    if conv_forms != "auto":
        return _form(conv_forms)
    return "canonical" if compiling_platform() == "cpu" else ACCELERATOR_CONV_FORMS


def compiling_platform() -> str:
    """The platform of the mesh a trace runs under (``jax.set_mesh``, as the training loop sets
    it), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def _form(conv_forms: str) -> str:
    if conv_forms not in CONV_FORMS:
        raise ValueError(f"conv_forms must be one of {', '.join(CONV_FORMS)}, got "
                         f"{conv_forms!r}")
    return conv_forms


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
    faster than the direct form's (``benchmarks/gan_step.py --conv-forms canonical,xla``)."""
    n, h, w, _ = x.shape
    cout = kernel.shape[-1]
    y = canonical_conv(x, subpixel_kernel(kernel), (1, 1), ((1, 1), (1, 1)))
    y = y.reshape(n, h, w, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * h, 2 * w, cout)


class ConvTranspose4x4Up(nn.Module):
    """4x4 stride-2 transposed convolution, padding 1 (PyTorch ``ConvTranspose2d(c, f, 4, 2, 1)``).

    ``conv_forms`` picks the computation, not the model (:data:`CONV_FORMS`: ``canonical``, the
    sub-pixel form; ``xla``, the direct one): both share the ``kernel`` and ``bias`` parameters,
    so checkpoints are interchangeable. Computes in ``dtype`` with float32 parameters.
    """

    features: int
    conv_forms: str = "canonical"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", weight_init, (4, 4, x.shape[-1], self.features))
        bias = self.param("bias", bias_init, (self.features,))
        up = (conv_transpose_4x4_s2_subpixel if resolve_conv_forms(self.conv_forms) == "canonical"
              else conv_transpose_4x4_s2)
        x, kernel, bias = (v.astype(self.dtype) for v in (x, kernel, bias))
        return up(x, kernel) + bias
