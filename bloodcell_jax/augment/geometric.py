"""Geometric ops: dihedral flips/rotations and one random affine warp (rotation, random resized
crop, shear, translation) sampled once per image.

Every op takes (key, image, magnitude, fill_mode), the image float (H, W, C) in [0, 1], and
magnitude in [0, 1] scaling how far from the identity the random transform may go.
"""

import jax
import jax.numpy as jnp

from bloodcell_jax.augment.sampling import affine


def dihedral(key, image, magnitude=1.0, fill_mode="reflect"):
  """One of the 8 flips/rotations of a square image, uniformly: blood cells have no orientation."""
  del magnitude, fill_mode
  choice = jax.random.randint(key, (), 0, 8)
  flipped = jnp.where(choice >= 4, image[:, ::-1], image)
  return jax.lax.switch(choice % 4, [lambda x: x, lambda x: jnp.rot90(x, 1), lambda x: jnp.rot90(x, 2),
                                     lambda x: jnp.rot90(x, 3)], flipped)


def _rotation(angle):
  c, s = jnp.cos(angle), jnp.sin(angle)
  return jnp.array([[c, -s], [s, c]])


def random_affine(key, image, magnitude=1.0, fill_mode="reflect"):
  """Rotation by any angle, random resized crop, shear and translation, in a single warp.

  At magnitude m: the crop keeps between 1 - 0.6m and 1 of the area (aspect ratio within
  (4/3)^(+-m)), shear up to 0.25m, the crop moves freely inside the image; the angle is uniform
  over the circle whenever m > 0 (cells have no up).
  """
  h, w = image.shape[:2]
  k_angle, k_area, k_ratio, k_shear, k_shift = jax.random.split(key, 5)
  angle = jax.random.uniform(k_angle, (), minval=-jnp.pi, maxval=jnp.pi) * (magnitude > 0)
  area = jax.random.uniform(k_area, (), minval=1.0 - 0.6 * magnitude, maxval=1.0)
  log_ratio = jax.random.uniform(k_ratio, (), minval=-1.0, maxval=1.0) * magnitude * jnp.log(4 / 3)
  scale = jnp.minimum(jnp.sqrt(area) * jnp.exp(jnp.array([log_ratio, -log_ratio]) / 2), 1.0)
  shear = jax.random.uniform(k_shear, (), minval=-0.25, maxval=0.25) * magnitude
  shift = jax.random.uniform(k_shift, (2,), minval=-1.0, maxval=1.0) * (1.0 - scale) * jnp.array([h, w]) / 2
  matrix = _rotation(angle) @ jnp.array([[1.0, shear], [0.0, 1.0]]) @ jnp.diag(scale)
  return affine(image, matrix, shift, fill_mode)


# Single-transform ops with a signed random strength, as RandAugment uses them.
def _signed(key, magnitude, maximum):
  return jnp.where(jax.random.bernoulli(key), 1.0, -1.0) * magnitude * maximum


def rotate(key, image, magnitude=1.0, fill_mode="reflect"):
  """Rotation by +-30 degrees at magnitude 1."""
  return affine(image, _rotation(_signed(key, magnitude, jnp.pi / 6)), jnp.zeros(2), fill_mode)


def shear_x(key, image, magnitude=1.0, fill_mode="reflect"):
  return affine(image, jnp.array([[1.0, 0.0], [_signed(key, magnitude, 0.3), 1.0]]), jnp.zeros(2), fill_mode)


def shear_y(key, image, magnitude=1.0, fill_mode="reflect"):
  return affine(image, jnp.array([[1.0, _signed(key, magnitude, 0.3)], [0.0, 1.0]]), jnp.zeros(2), fill_mode)


def translate_x(key, image, magnitude=1.0, fill_mode="reflect"):
  """Shift by up to 45% of the width at magnitude 1."""
  return affine(image, jnp.eye(2), jnp.array([0.0, _signed(key, magnitude, 0.45 * image.shape[1])]), fill_mode)


def translate_y(key, image, magnitude=1.0, fill_mode="reflect"):
  return affine(image, jnp.eye(2), jnp.array([_signed(key, magnitude, 0.45 * image.shape[0]), 0.0]), fill_mode)


def zoom(key, image, magnitude=1.0, fill_mode="reflect"):
  """Zoom in or out by up to 30% at magnitude 1."""
  return affine(image, jnp.eye(2) * (1.0 + _signed(key, magnitude, 0.3)), jnp.zeros(2), fill_mode)
