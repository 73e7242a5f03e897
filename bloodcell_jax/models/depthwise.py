"""A depthwise convolution with two interchangeable implementations and one parameter tree.

XLA runs grouped convolutions (feature_group_count == channels) slowly on CPU, and on GPU their
backward pass is slow too; a k x k depthwise convolution written as k*k shifted multiply-adds,
which XLA fuses into one memory-bound loop, trains faster on both. Measured: ConvNeXt-T, 96x96,
train step images/s, CPU (2-core EPYC, fp32, batch 32) 14.3 shift vs 9.6 grouped; H100 (bf16,
batch 256) 8419 vs 6654 (though eval alone is faster grouped: 53k vs 42k). TPUs keep the
grouped convolution (not measured here). `impl="auto"` picks per backend at trace time. Both
use the kernel layout of `flax.linen.Conv(feature_group_count=C)`: (k, k, 1, C).
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

IMPLEMENTATIONS = ("auto", "xla", "shift")


def resolve_impl(impl: str) -> str:
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"depthwise impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
  if impl == "auto":
    return "xla" if jax.default_backend() == "tpu" else "shift"
  return impl


def explicit_padding(size: int, kernel: int, stride: int, padding) -> tuple[int, int]:
  """(before, after) padding of one spatial axis; "SAME" is TensorFlow's (the extra pixel after)."""
  if padding != "SAME":
    return tuple(padding)
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def depthwise_conv(x: jax.Array, kernel: jax.Array, impl: str, stride: int = 1, padding="SAME") -> jax.Array:
  """Depthwise convolution of NHWC `x` with a (k, k, 1, C) kernel; `padding` is "SAME" or
  ((top, bottom), (left, right))."""
  k = kernel.shape[0]
  pads = [explicit_padding(x.shape[axis], k, stride, padding if padding == "SAME" else padding[axis - 1])
          for axis in (1, 2)]
  if resolve_impl(impl) == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
  padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  height = (padded.shape[1] - k) // stride + 1
  width = (padded.shape[2] - k) // stride + 1
  out = None
  for i in range(k):
    for j in range(k):
      window = padded[:, i:i + stride * (height - 1) + 1:stride, j:j + stride * (width - 1) + 1:stride, :]
      term = window * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution; parameters named like `nn.Conv` (kernel, bias)."""

  kernel_size: int = 7
  impl: str = "auto"
  dtype: jnp.dtype | None = None
  kernel_init: nn.initializers.Initializer = nn.initializers.truncated_normal(0.02)
  stride: int = 1
  padding: str | tuple = "SAME"  # or ((top, bottom), (left, right))
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, channels))
    if not self.use_bias:
      x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
      return depthwise_conv(x, kernel, self.impl, self.stride, self.padding)
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return depthwise_conv(x, kernel, self.impl, self.stride, self.padding) + bias
