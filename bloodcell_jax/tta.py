"""Test-time augmentation: the softmax averaged over flipped and rotated copies of each image.

Blood cells have no orientation, so the dihedral copies are as valid as the original; averaging
them removes some of the model's orientation noise. Each view is a pure layout change (no
resampling), and the views run one after another under `lax.map` so memory stays that of one batch.
"""

import jax
import jax.numpy as jnp

# (quarter turns, then mirror left-right) per view; the first view is always the image as is.
VIEWS = {
    "none": ((0, False),),
    "hflip": ((0, False), (0, True)),
    "flips": ((0, False), (0, True), (2, True), (2, False)),  # as is, left-right, up-down, both
    "rot90": ((0, False), (1, False), (2, False), (3, False)),
    "dihedral": tuple((k, m) for m in (False, True) for k in range(4)),
}


def check(name: str) -> str:
  if name not in VIEWS:
    raise ValueError(f"unknown test-time augmentation {name!r}; choose from {', '.join(VIEWS)}")
  return name


def view(images: jax.Array, quarter_turns: int, mirror: bool) -> jax.Array:
  """One view of a (B, H, W, C) batch of square images."""
  out = jnp.rot90(images, quarter_turns, axes=(1, 2))
  return out[:, :, ::-1] if mirror else out


def views(images: jax.Array, name: str) -> jax.Array:
  """(V, B, H, W, C): every view of the batch named by `name`."""
  return jnp.stack([view(images, k, m) for k, m in VIEWS[check(name)]])


def probabilities(apply, images: jax.Array, name: str):
  """(logits of the plain view, softmax of the plain view, softmax averaged over all views, extras of
  the plain view) where `apply(images) -> (logits, extras)` (extras: any pytree, e.g. features)."""
  if name == "none":
    logits, extras = apply(images)
    probs = jax.nn.softmax(logits)
    return logits, probs, probs, extras
  all_logits, all_extras = jax.lax.map(apply, views(images, name))
  all_probs = jax.nn.softmax(all_logits)
  return all_logits[0], all_probs[0], all_probs.mean(0), jax.tree.map(lambda x: x[0], all_extras)
