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


def depthwise_conv(x: jax.Array, kernel: jax.Array, impl: str) -> jax.Array:
  """'SAME'-padded, stride-1 depthwise convolution of NHWC `x` with an odd (k, k, 1, C) kernel."""
  k = kernel.shape[0]
  if resolve_impl(impl) == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
  pad = k // 2
  height, width = x.shape[1], x.shape[2]
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = None
  for i in range(k):
    for j in range(k):
      term = padded[:, i:i + height, j:j + width, :] * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution with bias; parameters named like `nn.Conv` (kernel, bias)."""

  kernel_size: int = 7
  impl: str = "auto"
  dtype: jnp.dtype | None = None
  kernel_init: nn.initializers.Initializer = nn.initializers.truncated_normal(0.02)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, channels))
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return depthwise_conv(x, kernel, self.impl) + bias
