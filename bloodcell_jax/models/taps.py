"""Where every model exposes what lies between its layers: the last stage's feature map (for
class-activation maps) and each stage's output (for the open-set rejector, which looks at every
depth: early stages see colour and texture, late ones the cell's shape).

Both are sown into Flax's `intermediates` collection (`model.apply(..., mutable=[INTERMEDIATES])`
returns them). The feature map also passes through `perturb`, so the gradient of a logit with
respect to it is the gradient with respect to a zero `FEATURE_MAP_DELTA` passed in that collection
(Flax's way to differentiate by an intermediate). `model.init` never creates the collection, so
the models' variables are what they were without these taps.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

INTERMEDIATES = "intermediates"
STAGES, FEATURE_MAP, FEATURE_MAP_DELTA = "stages", "feature_map", "feature_map_delta"


def feature_map(module: nn.Module, x: jax.Array) -> jax.Array:
  """The last stage's output (B, h, w, C), as returned (plus a perturbation when one is passed)."""
  x = module.perturb(FEATURE_MAP_DELTA, x, collection=INTERMEDIATES)
  module.sow(INTERMEDIATES, FEATURE_MAP, x)
  return x


def stage(module: nn.Module, x: jax.Array) -> jax.Array:
  """A stage's output (B, h, w, C); the sown tuple holds them in order, first stage first."""
  module.sow(INTERMEDIATES, STAGES, x)
  return x


def stage_statistics(intermediates: dict) -> tuple:
  """Per stage, the mean and standard deviation of each channel over the image (B, 2C), in float32:
  what the rejector compares with the training cells."""
  return tuple(jnp.concatenate([m.mean((1, 2)), m.std((1, 2))], -1).astype(jnp.float32)
               for m in intermediates[INTERMEDIATES][STAGES])
