"""Exact (erf) GELU with a hand-written derivative.

timm's ConvNeXt uses the exact GELU, x * Phi(x). `jax.nn.gelu(approximate=False)` writes it with
erfc, whose XLA expansion is costly, and leaves the derivative to autodiff, which runs erfc and
exp in separate passes. Here the forward uses erf (what PyTorch computes; equal to 1e-6 absolute)
and the JVP computes Phi(x) + x * phi(x) in the same pass as the output, so the backward pass is
one multiply. ConvNeXt-T train step, 2-core CPU: see docs/benchmarks.md.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _normal_cdf(x: jax.Array) -> jax.Array:
  return 0.5 * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


@jax.custom_jvp
def gelu(x: jax.Array) -> jax.Array:
  """0.5 * x * (1 + erf(x / sqrt(2)))."""
  return x * _normal_cdf(x)


@gelu.defjvp
def _gelu_jvp(primals, tangents):
  (x,), (x_dot,) = primals, tangents
  cdf = _normal_cdf(x)
  pdf = jnp.exp(-0.5 * x * x) * np.asarray(1.0 / np.sqrt(2.0 * np.pi), dtype=x.dtype)
  return x * cdf, (cdf + x * pdf) * x_dot
