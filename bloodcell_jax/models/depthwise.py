"""A depthwise convolution with interchangeable implementations and one parameter tree.

XLA runs grouped convolutions (feature_group_count == channels) slowly on CPU, and on GPU their
backward pass is slow too. A k x k depthwise convolution written as k*k shifted multiply-adds
fuses into one memory-bound loop instead. Its gradient needs the same care: left to autodiff, the
kernel gradient becomes k*k separate reductions, each reading the whole input and output gradient
again (94 ms of a 108 ms forward+backward at ConvNeXt-T's first stage on a 2-core CPU). `shift`
therefore carries its own VJP: the input gradient is the same shift-add with the flipped kernel
over the (dilated, re-padded) output gradient, and the kernel gradient is k variadic reductions
(one per kernel row, float32 accumulators), image by image, then summed over the batch.
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
  """The k*k strided (height, width) windows of a padded NHWC array, row-major over the kernel."""
  for i in range(k):
    for j in range(k):
      yield padded[:, i:i + stride * (height - 1) + 1:stride, j:j + stride * (width - 1) + 1:stride, :]


def _output_size(size: int, k: int, stride: int, pads: tuple[int, int]) -> int:
  return (size + pads[0] + pads[1] - k) // stride + 1


def _shift_add(x: jax.Array, kernel: jax.Array, stride: int, pads: Pads) -> jax.Array:
  k = kernel.shape[0]
  padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  height, width = (_output_size(x.shape[axis], k, stride, pads[axis - 1]) for axis in (1, 2))
  out = None
  for window, weight in zip(_windows(padded, k, stride, height, width), kernel.reshape(k * k, -1)):
    term = window * weight
    out = term if out is None else out + term
  return out


def _computed_once(y: jax.Array) -> jax.Array:
  """`y` written to memory once, on CPUs.

  XLA:CPU fuses a cheap-looking elementwise producer into each of its consumers and evaluates it
  again there (and it removes `optimization_barrier`s), so one k*k-tap shift-add was being computed
  again inside the LayerNorm forward, its backward and every kernel-gradient reduction: 4x the
  time of the layer's forward and backward with it written once (ConvNeXt-T's stages, 2-core Zen 3).
  A conditional's operand is always a buffer; both branches return `y` (the predicate only has to
  be unknown when compiling). Other backends get `y` as is: a GPU conditional waits for the host.
  """
  if jax.default_backend() != "cpu":
    return y
  corner = y[(0,) * y.ndim]
  return jax.lax.cond(corner == corner, lambda v: v, lambda v: v * 1, y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _shift_add_fused_grad(x: jax.Array, kernel: jax.Array, stride: int, pads: Pads, write_output: bool) -> jax.Array:
  y = _shift_add(x, kernel, stride, pads)
  return _computed_once(y) if write_output else y


def _forward(x, kernel, stride, pads, write_output):
  return _shift_add_fused_grad(x, kernel, stride, pads, write_output), (x, kernel)


def _backward(stride, pads, write_output, residuals, grad):
  del write_output
  x, kernel = residuals
  k = kernel.shape[0]
  # Input gradient: a stride-1 shift-add of the flipped kernel over the output gradient, dilated by
  # the stride and padded (negative padding crops) so that the result has the input's shape.
  grad_pads = []
  for axis in (1, 2):
    dilated = (grad.shape[axis] - 1) * stride + 1
    low = k - 1 - pads[axis - 1][0]
    grad_pads.append((low, x.shape[axis] + k - 1 - dilated - low, stride - 1))
  dilated_grad = jax.lax.pad(grad, jnp.zeros((), grad.dtype), ((0, 0, 0), *grad_pads, (0, 0, 0)))
  x_grad = _computed_once(_shift_add(dilated_grad, kernel[::-1, ::-1], 1, ((0, 0), (0, 0))))
  # Kernel gradient: the k*k sums of window * grad, one variadic reduction per kernel row (k sums in
  # one pass), accumulated in float32 at least (bfloat16 sums over a whole batch would lose the
  # gradient's low bits). XLA:CPU emits a variadic reduction as one loop per output element with all
  # its accumulators live: k of them fit in registers, k*k do not (one reduction of all 49 sums was
  # 1.2-3x slower on ConvNeXt-T's shapes), and k*k single reductions each re-read the whole input
  # (5x slower). Each image's rows and columns are reduced first, then the small (k, batch, C) rest:
  # straight to (C,) the loop strides through the whole batch once per channel (1.1-3.5x slower).
  padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  accumulate = jnp.promote_types(grad.dtype, jnp.float32)
  wide_grad = _computed_once(grad.astype(accumulate))
  windows = [window.astype(accumulate) for window in _windows(padded, k, stride, grad.shape[1], grad.shape[2])]
  kernel_rows = []
  for row in range(k):
    products = tuple(window * wide_grad for window in windows[row * k:(row + 1) * k])
    per_image = jax.lax.reduce(products, (jnp.zeros((), accumulate),) * k,
                               lambda a, b: tuple(u + v for u, v in zip(a, b)), (1, 2))
    kernel_rows.append(jnp.stack(per_image).sum(axis=1))
  kernel_grad = jnp.stack(kernel_rows).reshape(kernel.shape).astype(kernel.dtype)
  return x_grad.astype(x.dtype), kernel_grad


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
