"""Features times a weight matrix, with the weight gradient in the form XLA:CPU's fast library takes.

Autodiff's weight gradient of `x @ W` is x^T dy, a dot that contracts the first (batch) dimension
of x. XLA:CPU hands a dot to YNNPACK only when its lhs contracts its last dimension, so every
weight gradient fell back to Eigen's dot: in a ConvNeXt-T train step on a 2-core Zen 3 those took
37% of the step, more than the forward and input-gradient dots (twice the FLOPs) together.
`transposed_grad` materialises a transpose instead and contracts its last dimension: x^T dy with
x^T (in, rows), or (dy^T x)^T with dy^T (out, rows) and the (out, in) result transposed, whichever
moves fewer elements (XLA:CPU's transposes run at a fraction of copy speed: transposing the wide dy
of an EfficientNet expansion cost more than the dot, and ConvNeXt-T's last-stage 768x3072 result,
fused into gradient clipping, took 11 ms on a 2-core Xeon where its x^T took 0.8). `impl="auto"`
picks it on CPUs; other backends keep autodiff's gradient (their dot libraries take either form).
Alone, one layer's Eigen dot is as fast; in a whole train step (ops running side by side) this
form measured faster, docs/benchmarks.md.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

IMPLEMENTATIONS = ("auto", "xla", "transposed_grad")


def resolve_impl(impl: str) -> str:
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"matmul impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
  if impl == "auto":
    return "transposed_grad" if jax.default_backend() == "cpu" else "xla"
  return impl


def _contract_last(a: jax.Array, b: jax.Array, b_axis: int) -> jax.Array:
  return jax.lax.dot_general(a, b, (((a.ndim - 1,), (b_axis,)), ((), ())))


@jax.custom_vjp
def _matmul_transposed_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _contract_last(x, kernel, 0)


def _forward(x, kernel):
  return _contract_last(x, kernel, 0), (x, kernel)


def _backward(residuals, grad):
  x, kernel = residuals
  rows, grad_rows = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
  (count, inputs), outputs = rows.shape, grad_rows.shape[1]
  barrier = jax.lax.optimization_barrier  # keeps XLA from folding the transposes into the dot
  if count * inputs <= outputs * (count + inputs):
    kernel_grad = barrier(_contract_last(barrier(rows.T), grad_rows, 0))
  else:
    kernel_grad = barrier(_contract_last(barrier(grad_rows.T), rows, 0)).T  # (dy^T x)^T = x^T dy
  return _contract_last(grad, kernel, 1), kernel_grad.astype(kernel.dtype)


_matmul_transposed_grad.defvjp(_forward, _backward)


def matmul(x: jax.Array, kernel: jax.Array, impl: str = "auto") -> jax.Array:
  """(..., in) @ (in, out) -> (..., out)."""
  if resolve_impl(impl) == "xla":
    return _contract_last(x, kernel, 0)
  return _matmul_transposed_grad(x, kernel)


class Dense(nn.Module):
  """`flax.linen.Dense` (same parameters, kernel (in, out) and bias) with the gradient of `impl`."""

  features: int
  impl: str = "auto"
  dtype: jnp.dtype | None = None
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return matmul(x, kernel, self.impl) + bias
