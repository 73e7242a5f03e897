"""The report's baseline: two conv + ReLU + max-pool layers, a dense layer, a linear classifier."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from bloodcell_jax.models import taps


class SimpleCNN(nn.Module):
  """Returns float32 logits; the softmax lives in the loss. Top-level names match ConvNeXt's
  grouping (`stages_*`, `head_*`) so freezing by stage works the same way."""

  num_classes: int
  features: Sequence[int] = (32, 64)
  hidden: int = 128
  dropout: float = 0.5
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, features in enumerate(self.features):
      x = nn.Conv(features, (3, 3), padding="SAME", dtype=self.dtype, name=f"stages_{i}")(x)
      x = taps.stage(self, nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2)), i)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="head_hidden")(x))
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head_fc")(x).astype(jnp.float32)
