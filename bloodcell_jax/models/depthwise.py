"""A depthwise convolution with interchangeable implementations and one parameter tree.

XLA runs grouped convolutions (feature_group_count == channels) slowly on CPU, and on GPU their
backward pass is slow too. A k x k depthwise convolution written as k*k shifted multiply-adds
fuses into one memory-bound loop instead. Its gradient needs the same care: left to autodiff, the
kernel gradient becomes k*k separate reductions, each reading the whole input and output gradient
again (94 ms of a 108 ms forward+backward at ConvNeXt-T's first stage on a 2-core CPU). `shift`
therefore carries its own VJP: the input gradient is the same shift-add with the flipped kernel
over the (dilated, re-padded) output gradient, and the kernel gradient is k variadic reductions
(one per kernel row, float32 accumulators), image by image, then summed over the batch. On CPUs
a 7x7 layer holds its arrays in channel blocks of 8 (cache locality; `_BLOCK` below).
`shift_autodiff` keeps autodiff's gradient, for comparison in benchmarks. Measured figures:
docs/benchmarks.md. `impl="auto"` picks per backend at trace time: CPUs `shift`, GPUs
`shift_autodiff` (what was measured on an H100; the hand-written VJP is not measured on a GPU yet),
TPUs the grouped convolution (not measured here). All use the kernel layout of
`flax.linen.Conv(feature_group_count=C)`: (k, k, 1, C).
"""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from bloodcell_jax.models.buffers import computed_once

IMPLEMENTATIONS = ("auto", "xla", "shift", "shift_autodiff")

Pads = tuple[tuple[int, int], tuple[int, int]]


def resolve_impl(impl: str) -> str:
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"depthwise impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
  if impl == "auto":
    return {"tpu": "xla", "gpu": "shift_autodiff"}.get(jax.default_backend(), "shift")
  return impl


def explicit_padding(size: int, kernel: int, stride: int, padding) -> tuple[int, int]:
  """(before, after) padding of one spatial axis; "SAME" is TensorFlow's (the extra pixel after)."""
  if padding != "SAME":
    return tuple(padding)
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _windows(padded: jax.Array, k: int, stride: int, height: int, width: int):
  """The k*k strided (height, width) windows of a padded array whose spatial axes are -3 and -2
  (NHWC, or the channel blocks below), row-major over the kernel."""
  for i in range(k):
    for j in range(k):
      yield padded[..., i:i + stride * (height - 1) + 1:stride, j:j + stride * (width - 1) + 1:stride, :]


def _output_size(x: jax.Array, k: int, stride: int, pads: Pads) -> tuple[int, int]:
  """(height, width) of the output for NHWC `x`."""
  return tuple((x.shape[axis] + pads[axis - 1][0] + pads[axis - 1][1] - k) // stride + 1 for axis in (1, 2))


def _pad(x: jax.Array, pads: Pads) -> jax.Array:
  return jnp.pad(x, ((0, 0),) * (x.ndim - 3) + (pads[0], pads[1], (0, 0)))


def _tap_sum(padded: jax.Array, taps: jax.Array, stride: int, height: int, width: int) -> jax.Array:
  """sum over the k*k taps of window * weight; `taps` (k*k, ...) broadcasts against a window."""
  k = round(len(taps) ** 0.5)
  out = None
  for window, weight in zip(_windows(padded, k, stride, height, width), taps):
    term = window * weight
    out = term if out is None else out + term
  return out


def _shift_add(x: jax.Array, kernel: jax.Array, stride: int, pads: Pads) -> jax.Array:
  k = kernel.shape[0]
  return _tap_sum(_pad(x, pads), kernel.reshape(k * k, -1), stride, *_output_size(x, k, stride, pads))


# Channel blocks on CPUs: (N, H, W, C) is held as (N, C/8, H, W, 8) inside a 7x7 layer. In NHWC
# the k*k windows of one output vector lie up to k image rows apart, so every output streams from
# 2k*k places at once (windows and weights) and misses the caches; in blocks an image's 8
# channels lie together. The 7x7 forward + backward (kernel gradient included) at ConvNeXt-T's and
# -B's stages: 1.0-3x faster, none slower (2-core Zen 3, docs/benchmarks.md). 3x3 and 5x5 layers
# stream from fewer places and gained or lost by shape (0.5-2.3x), so they stay NHWC. 8 floats are
# one AVX2 vector, the width XLA:CPU's loops use on AVX-512 machines too.
_BLOCK = 8
_MIN_BLOCKED_KERNEL = 7


def _use_blocks(channels: int, k: int) -> bool:
  return jax.default_backend() == "cpu" and channels % _BLOCK == 0 and k >= _MIN_BLOCKED_KERNEL


def _to_blocks(x: jax.Array, pads: Pads) -> jax.Array:
  """(N, H, W, C) -> padded (N, C/8, H', W', 8), written once (one transposing, padding pass)."""
  n, h, w, c = x.shape
  return computed_once(_pad(x.reshape(n, h, w, c // _BLOCK, _BLOCK).transpose(0, 3, 1, 2, 4), pads))


def _from_blocks(y: jax.Array) -> jax.Array:
  n, blocks, h, w, b = y.shape
  return y.transpose(0, 2, 3, 1, 4).reshape(n, h, w, blocks * b)


def _block_taps(kernel: jax.Array) -> jax.Array:
  k, c = kernel.shape[0], kernel.shape[-1]
  return kernel.reshape(k * k, c // _BLOCK, 1, 1, _BLOCK)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _shift_add_fused_grad(x: jax.Array, kernel: jax.Array, stride: int, pads: Pads, write_output: bool) -> jax.Array:
  # A single reader of the output would fuse the conversion back to NHWC into the sum: NHWC order again.
  if not (write_output and _use_blocks(x.shape[-1], kernel.shape[0])):
    y = _shift_add(x, kernel, stride, pads)
    return computed_once(y) if write_output else y
  size = _output_size(x, kernel.shape[0], stride, pads)
  return _from_blocks(computed_once(_tap_sum(_to_blocks(x, pads), _block_taps(kernel), stride, *size)))


def _forward(x, kernel, stride, pads, write_output):
  return _shift_add_fused_grad(x, kernel, stride, pads, write_output), (x, kernel)


def _kernel_grad(padded: jax.Array, grad: jax.Array, k: int, stride: int, grad_written: bool) -> jax.Array:
  """(k*k, C): the sums of window * grad over batch and pixels, for NHWC or blocked arrays.

  One variadic reduction per kernel row (k sums in one pass), accumulated in float32 at least
  (bfloat16 sums over a whole batch would lose the gradient's low bits). XLA:CPU emits a variadic
  reduction as one scalar loop per output element with all its accumulators live: k of them fit in
  registers, k*k do not (one reduction of all 49 sums was 1.2-3x slower on ConvNeXt-T's shapes),
  and k*k single reductions each re-read the whole input (5x slower). Each image's rows and columns
  are reduced first, then the small (k, batch, ...) rest: straight to the channels, the loop strides
  through the whole batch once per channel (1.1-3.5x slower).
  """
  accumulate = jnp.promote_types(grad.dtype, jnp.float32)
  wide_grad = grad.astype(accumulate)
  if wide_grad.dtype != grad.dtype or not grad_written:  # read by k reductions: not to be evaluated k times
    wide_grad = computed_once(wide_grad)
  height, width = grad.shape[-3:-1]
  windows = [window.astype(accumulate) for window in _windows(padded, k, stride, height, width)]
  rows = []
  for row in range(k):
    products = tuple(window * wide_grad for window in windows[row * k:(row + 1) * k])
    per_image = jax.lax.reduce(products, (jnp.zeros((), accumulate),) * k,
                               lambda a, b: tuple(u + v for u, v in zip(a, b)), (grad.ndim - 3, grad.ndim - 2))
    rows.append(jnp.stack(per_image).sum(axis=1).reshape(k, -1))
  return jnp.concatenate(rows)


def _backward(stride, pads, write_output, residuals, grad):
  x, kernel = residuals
  k, channels = kernel.shape[0], kernel.shape[-1]
  blocked = write_output and _use_blocks(channels, k)
  # Input gradient: a stride-1 shift-add of the flipped kernel over the output gradient, dilated by
  # the stride and padded (negative padding crops) so that the result has the input's shape.
  grad_pads = []
  for axis in (1, 2):
    dilated = (grad.shape[axis] - 1) * stride + 1
    low = k - 1 - pads[axis - 1][0]
    grad_pads.append((low, x.shape[axis] + k - 1 - dilated - low, stride - 1))
  flipped = kernel[::-1, ::-1]
  if blocked:
    grad_blocks = _to_blocks(grad, ((0, 0), (0, 0)))
    dilated_grad = jax.lax.pad(grad_blocks, jnp.zeros((), grad.dtype), ((0, 0, 0), (0, 0, 0), *grad_pads, (0, 0, 0)))
    x_grad = _from_blocks(computed_once(_tap_sum(dilated_grad, _block_taps(flipped), 1, *x.shape[1:3])))
    kernel_grad = _kernel_grad(_to_blocks(x, pads), grad_blocks, k, stride, grad_written=True)
  else:
    dilated_grad = jax.lax.pad(grad, jnp.zeros((), grad.dtype), ((0, 0, 0), *grad_pads, (0, 0, 0)))
    x_grad = computed_once(_tap_sum(dilated_grad, flipped.reshape(k * k, -1), 1, *x.shape[1:3]))
    kernel_grad = _kernel_grad(_pad(x, pads), grad, k, stride, grad_written=False)
  return x_grad.astype(x.dtype), kernel_grad.reshape(kernel.shape).astype(kernel.dtype)


_shift_add_fused_grad.defvjp(_forward, _backward)


def depthwise_conv(x: jax.Array, kernel: jax.Array, impl: str, stride: int = 1, padding="SAME",
                   write_output: bool = True) -> jax.Array:
  """Depthwise convolution of NHWC `x` with a (k, k, 1, C) kernel; `padding` is "SAME" or
  ((top, bottom), (left, right)).

  `write_output` (the shift-add on CPUs): write the output to memory before its consumers rather
  than let XLA compute the k*k-tap sum again inside each. It pays where the output is read more
  than once, as a LayerNorm or a training BatchNorm does (statistics, then normalisation; ConvNeXt-T
  eval 10% faster), and costs before a single elementwise reader such as an inference BatchNorm
  (EfficientNet-Lite0 eval 5% slower)."""
  k = kernel.shape[0]
  pads = tuple(explicit_padding(x.shape[axis], k, stride, padding if padding == "SAME" else padding[axis - 1])
               for axis in (1, 2))
  impl = resolve_impl(impl)
  if impl == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
  if impl == "shift_autodiff":
    return _shift_add(x, kernel, stride, pads)
  return _shift_add_fused_grad(x, kernel, stride, pads, write_output)


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution; parameters named like `nn.Conv` (kernel, bias)."""

  kernel_size: int = 7
  impl: str = "auto"
  dtype: jnp.dtype | None = None
  kernel_init: nn.initializers.Initializer = nn.initializers.truncated_normal(0.02)
  stride: int = 1
  padding: str | tuple = "SAME"  # or ((top, bottom), (left, right))
  use_bias: bool = True
  write_output: bool = True  # False where one elementwise op reads the output (see depthwise_conv)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, channels))
    if not self.use_bias:
      x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
      return depthwise_conv(x, kernel, self.impl, self.stride, self.padding, self.write_output)
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return depthwise_conv(x, kernel, self.impl, self.stride, self.padding, self.write_output) + bias
