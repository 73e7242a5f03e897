"""Small-kernel convolution as a sum of shifted copies, with a kernel that may differ per example.

A per-example kernel under vmap would turn `lax.conv` into a grouped convolution, which XLA runs
slowly on CPU; a weighted sum of k*k shifted views vectorises over the batch instead. Edges mirror.
"""

import jax
import jax.numpy as jnp


def convolve(image: jax.Array, kernel: jax.Array) -> jax.Array:
  """`image` (H, W, C) correlated with `kernel` (k, k), k odd, same size out, edges mirrored."""
  k = kernel.shape[0]
  r = k // 2
  h, w = image.shape[:2]
  padded = jnp.pad(image, ((r, r), (r, r), (0, 0)), mode="symmetric")
  out = jnp.zeros_like(image)
  for dy in range(k):
    for dx in range(k):
      out = out + kernel[dy, dx] * padded[dy:dy + h, dx:dx + w]
  return out


def convolve_separable(image: jax.Array, taps: jax.Array) -> jax.Array:
  """`image` filtered by `taps` (k,) along rows, then along columns; edges mirrored."""
  k = taps.shape[0]
  r = k // 2
  h, w = image.shape[:2]
  padded = jnp.pad(image, ((r, r), (0, 0), (0, 0)), mode="symmetric")
  image = sum(taps[i] * padded[i:i + h] for i in range(k))
  padded = jnp.pad(image, ((0, 0), (r, r), (0, 0)), mode="symmetric")
  return sum(taps[i] * padded[:, i:i + w] for i in range(k))


def gaussian_taps(sigma: jax.Array, radius: int) -> jax.Array:
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  taps = jnp.exp(-0.5 * jnp.square(x / jnp.maximum(sigma, 1e-3)))
  return taps / taps.sum()
