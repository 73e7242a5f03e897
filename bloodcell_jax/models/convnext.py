"""ConvNeXt (Liu et al., 2022) with timm's variants, module names and numerics.

Parameter paths mirror timm's state-dict keys (`stages_1/blocks_0/conv_dw/kernel` for
`stages.1.blocks.0.conv_dw.weight`) so that ported ImageNet weights map by a table of patterns.
Numerics follow timm: LayerNorm eps 1e-6, exact (erf) GELU, layer scale initialised to 1e-6,
stochastic depth rising linearly over the blocks, head = global average pool, LayerNorm, dropout,
linear. Fully convolutional: 96x96 inputs work as well as 224x224.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from bloodcell_jax.models import taps
from bloodcell_jax.models.activations import gelu
from bloodcell_jax.models.buffers import computed_once
from bloodcell_jax.models.depthwise import DepthwiseConv
from bloodcell_jax.models.matmul import Dense
from bloodcell_jax.models.patch_conv import PatchConv

# name: (blocks per stage, channels per stage), as in timm.
VARIANTS = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}

_dense_init = nn.initializers.truncated_normal(0.02)


def _layer_norm(name: str, dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name)


class DropPath(nn.Module):
  """Stochastic depth: drops the residual branch per example with probability `rate`."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    mask = computed_once(mask.astype(x.dtype)) > 0  # threefry once, not per activation element
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class ConvNeXtBlock(nn.Module):
  """Depthwise 7x7 conv, LayerNorm, MLP (4x, GELU), layer scale, stochastic depth, residual."""

  drop_path: float = 0.0
  layer_scale_init: float = 1e-6
  mlp_ratio: int = 4
  depthwise_impl: str = "auto"
  matmul_impl: str = "auto"
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dim = x.shape[-1]
    shortcut = x
    x = DepthwiseConv(7, self.depthwise_impl, self.dtype, name="conv_dw")(x)
    x = _layer_norm("norm", self.dtype)(x)
    x = Dense(self.mlp_ratio * dim, self.matmul_impl, self.dtype, _dense_init, name="mlp_fc1")(x)
    x = gelu(x)
    x = Dense(dim, self.matmul_impl, self.dtype, _dense_init, name="mlp_fc2")(x)
    gamma = self.param("gamma", nn.initializers.constant(self.layer_scale_init), (dim,))
    x = x * gamma.astype(x.dtype)
    return shortcut + DropPath(self.drop_path)(x, deterministic=not train)


class ConvNeXtStage(nn.Module):
  """Optional 2x2 stride-2 downsampling (LayerNorm then conv), then `depth` blocks."""

  dim: int
  depth: int
  downsample: bool
  drop_paths: Sequence[float]
  depthwise_impl: str = "auto"
  matmul_impl: str = "auto"
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.downsample:
      x = _layer_norm("downsample_0", self.dtype)(x)
      x = PatchConv(self.dim, 2, dtype=self.dtype, kernel_init=_dense_init, matmul_impl=self.matmul_impl,
                    name="downsample_1")(x)
    for i in range(self.depth):
      x = ConvNeXtBlock(self.drop_paths[i], depthwise_impl=self.depthwise_impl, matmul_impl=self.matmul_impl,
                        dtype=self.dtype, name=f"blocks_{i}")(x, train)
    return x


class ConvNeXt(nn.Module):
  """ConvNeXt classifier on NHWC float images already normalised; returns float32 logits."""

  num_classes: int
  depths: Sequence[int]
  dims: Sequence[int]
  drop_path_rate: float = 0.0
  head_dropout: float = 0.0
  depthwise_impl: str = "auto"
  matmul_impl: str = "auto"
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = PatchConv(self.dims[0], 4, dtype=self.dtype, kernel_init=_dense_init, matmul_impl=self.matmul_impl,
                  name="stem_0")(x)
    x = _layer_norm("stem_1", self.dtype)(x)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    first = 0
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      x = ConvNeXtStage(dim, depth, downsample=i > 0, drop_paths=rates[first:first + depth],
                        depthwise_impl=self.depthwise_impl, matmul_impl=self.matmul_impl, dtype=self.dtype,
                        name=f"stages_{i}")(x, train)
      x = taps.stage(self, x, i)
      first += depth
    x = jnp.mean(x, axis=(1, 2))
    x = _layer_norm("head_norm", self.dtype)(x)
    x = nn.Dropout(self.head_dropout)(x, deterministic=not train)
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_dense_init, name="head_fc")(x)
    return x.astype(jnp.float32)
