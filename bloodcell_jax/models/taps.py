"""Where every model exposes what lies between its layers: each stage's output, for the open-set
rejector (which looks at every depth: early stages see colour and texture, late ones the cell's
shape) and for class-activation maps.

Stage outputs are sown, in order, into Flax's `intermediates` collection
(`model.apply(..., mutable=[INTERMEDIATES])` returns them). Each also passes through `perturb`, so
the gradient of a logit with respect to stage i's output is the gradient with respect to a zero
`stage_delta(i)` passed in that collection (Flax's way to differentiate by an intermediate).
`model.init` never creates the collection, so the models' variables are what they were without
these taps.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

INTERMEDIATES = "intermediates"
STAGES = "stages"


def stage_delta(index: int) -> str:
  """The name of the perturbation added to stage `index`'s output."""
  return f"stage_{index}_delta"


def stage(module: nn.Module, x: jax.Array, index: int) -> jax.Array:
  """Stage `index`'s output (B, h, w, C), as returned (plus a perturbation when one is passed)."""
  x = module.perturb(stage_delta(index), x, collection=INTERMEDIATES)
  module.sow(INTERMEDIATES, STAGES, x)
  return x


def stage_statistics(intermediates: dict) -> tuple:
  """Per stage, the mean and standard deviation of each channel over the image (B, 2C), in float32:
  what the rejector compares with the training cells."""
  return tuple(jnp.concatenate([m.mean((1, 2)), m.std((1, 2))], -1).astype(jnp.float32)
               for m in intermediates[INTERMEDIATES][STAGES])
