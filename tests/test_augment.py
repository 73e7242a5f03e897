import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bloodcell_jax.augment import augment_batch, random_dihedral


def _dihedral_group(image):
  rotations = [np.rot90(image, k) for k in range(4)]
  return rotations + [np.rot90(image[:, ::-1], k) for k in range(4)]


def test_dihedral_outputs_are_flips_or_rotations_and_all_eight_occur():
  image = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
  group = _dihedral_group(image)
  seen = set()
  for i in range(64):
    out = np.asarray(random_dihedral(jax.random.PRNGKey(i), jnp.asarray(image)))
    matches = [j for j, g in enumerate(group) if np.array_equal(out, g)]
    assert len(matches) == 1 and out.dtype == np.uint8
    seen.add(matches[0])
  assert seen == set(range(8))


def test_batch_augmentation_is_per_example_and_reproducible():
  images = jnp.tile(jnp.arange(16, dtype=jnp.uint8).reshape(1, 4, 4, 1), (32, 1, 1, 3))
  a = jax.jit(augment_batch, static_argnums=2)(jax.random.PRNGKey(0), images, "dihedral")
  b = jax.jit(augment_batch, static_argnums=2)(jax.random.PRNGKey(0), images, "dihedral")
  np.testing.assert_array_equal(a, b)
  assert len({np.asarray(x).tobytes() for x in a}) > 1  # examples differ from one another
  np.testing.assert_array_equal(augment_batch(jax.random.PRNGKey(0), images, "none"), images)
  with pytest.raises(ValueError, match="augment policy"):
    augment_batch(jax.random.PRNGKey(0), images, "heavy")
