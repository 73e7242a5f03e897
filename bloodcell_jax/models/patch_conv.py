"""A k x k convolution with stride k (patchify), written as a reshape and one matrix multiply.

ConvNeXt's stem (4x4, stride 4) and downsampling layers (2x2, stride 2) see each input pixel
once, so they are a dense layer over non-overlapping patches; so is every 1 x 1 convolution
(patch 1: EfficientNet's pointwise expansions and projections). XLA:CPU ran them as generic
convolutions, slowly in the backward pass (a 1 x 1 kernel's gradient became a convolution whose
window is the whole feature map, under 1 GFLOP/s on a Zen 3 core); as a matmul (matmul.py) they
take the fast dot path on every backend. Parameters are those of `flax.linen.Conv` (kernel (k, k,
in, out), bias), so ported weights and checkpoints do not change. Like a VALID convolution, rows
and columns that do not fill a whole patch are dropped.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from bloodcell_jax.models.matmul import matmul


def patchify(x: jax.Array, patch: int) -> jax.Array:
  """(B, H, W, C) -> (B, H // patch, W // patch, patch * patch * C), patch pixels row-major."""
  batch, height, width, channels = x.shape
  rows, cols = height // patch, width // patch
  x = x[:, :rows * patch, :cols * patch]
  x = x.reshape(batch, rows, patch, cols, patch, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, rows, cols, patch * patch * channels)


class PatchConv(nn.Module):
  """`nn.Conv(features, (patch, patch), strides=(patch, patch), padding="VALID")` as a matmul."""

  features: int
  patch: int
  dtype: jnp.dtype | None = None
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  use_bias: bool = True
  matmul_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (self.patch, self.patch, channels, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = matmul(patchify(x, self.patch), kernel.reshape(-1, self.features), self.matmul_impl)
    return y if bias is None else y + bias
