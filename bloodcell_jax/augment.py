"""On-device augmentation inside the jitted train step, with one key per example.

Blood-cell images have no canonical orientation, so the eight flips/rotations of the square
(the dihedral group) are free, label-preserving augmentation. Each example's key is folded from
the step's per-device key and the example's index, so the same key gives the same output.
"""

import jax
import jax.numpy as jnp

POLICIES = ("none", "dihedral")


def random_dihedral(key: jax.Array, image: jax.Array) -> jax.Array:
  """One of the 8 flips/rotations of a square HWC image, chosen uniformly by `key`."""
  choice = jax.random.randint(key, (), 0, 8)
  flipped = jnp.where(choice >= 4, image[:, ::-1], image)
  return jax.lax.switch(choice % 4, [lambda x: x, lambda x: jnp.rot90(x, 1), lambda x: jnp.rot90(x, 2),
                                     lambda x: jnp.rot90(x, 3)], flipped)


def augment_batch(key: jax.Array, images: jax.Array, policy: str) -> jax.Array:
  """Applies `policy` to a batch (N, H, W, C) with per-example keys; "none" returns it unchanged."""
  if policy == "none":
    return images
  if policy == "dihedral":
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(images.shape[0]))
    return jax.vmap(random_dihedral)(keys, images)
  raise ValueError(f"augment policy must be one of {POLICIES}, got {policy!r}")
