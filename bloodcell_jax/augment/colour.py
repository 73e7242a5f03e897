"""Colour ops: photometric jitter (via dm-pix), Wright-Giemsa stain jitter, and the intensity ops
RandAugment uses. Same signature as the geometric ops; outputs are clipped back to [0, 1].

Stain jitter follows Tellez et al. (2018, "H&E-stain augmentation"): unmix the optical density
into stain concentrations with the Ruifrok-Johnston matrix, scale and shift each stain, remix.
Wright-Giemsa's eosin and azure/methylene blue sit close enough to that basis for the jitter to
produce plausible smear-to-smear colour variation.
"""

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from bloodcell_jax.augment.filters import convolve

# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB) in optical density.
_RGB_FROM_STAIN = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
_RGB_FROM_STAIN[2] = np.cross(_RGB_FROM_STAIN[0], _RGB_FROM_STAIN[1])
_RGB_FROM_STAIN /= np.linalg.norm(_RGB_FROM_STAIN, axis=1, keepdims=True)
_STAIN_FROM_RGB = np.linalg.inv(_RGB_FROM_STAIN).astype(np.float32)
_MIN_INTENSITY = 1e-4


def mix_channels(image: jax.Array, matrix) -> jax.Array:
  """`image @ matrix` over the channel axis, written out as a sum of scaled channels: as a dot with a
  3-long contraction XLA:CPU took 4.3 ms per 64 images of 96x96, as this sum 0.12 ms."""
  return sum(image[..., i:i + 1] * matrix[i] for i in range(matrix.shape[0]))


def _uniform(key, low, high, shape=()):
  return jax.random.uniform(key, shape, minval=low, maxval=high)


def _clip(image):
  return jnp.clip(image, 0.0, 1.0)


def brightness(key, image, magnitude=1.0, fill_mode=None):
  """Adds up to +-0.3 at magnitude 1."""
  return _clip(pix.adjust_brightness(image, _uniform(key, -0.3, 0.3) * magnitude))


def contrast(key, image, magnitude=1.0, fill_mode=None):
  """Scales the distance to the mean by 1 +- 0.5 at magnitude 1."""
  return _clip(pix.adjust_contrast(image, 1.0 + _uniform(key, -0.5, 0.5) * magnitude))


def saturation(key, image, magnitude=1.0, fill_mode=None):
  return _clip(pix.adjust_saturation(image, 1.0 + _uniform(key, -0.6, 0.6) * magnitude))


def hue(key, image, magnitude=1.0, fill_mode=None):
  """Turns the hue by up to +-0.08 of the circle at magnitude 1 (beyond that stains change identity)."""
  return _clip(pix.adjust_hue(image, _uniform(key, -0.08, 0.08) * magnitude))


def gamma(key, image, magnitude=1.0, fill_mode=None):
  """Gamma in [e^-0.5, e^0.5] at magnitude 1."""
  return _clip(pix.adjust_gamma(jnp.maximum(image, 0.0), jnp.exp(_uniform(key, -0.5, 0.5) * magnitude)))


def stain(key, image, magnitude=1.0, fill_mode=None):
  """Each stain's concentration scaled by 1 +- 0.25m and shifted by +-0.05m (optical density)."""
  k_scale, k_shift = jax.random.split(key)
  scale = 1.0 + _uniform(k_scale, -0.25, 0.25, (3,)) * magnitude
  shift = _uniform(k_shift, -0.05, 0.05, (3,)) * magnitude
  density = -jnp.log(jnp.maximum(image, _MIN_INTENSITY))
  stains = mix_channels(density, _STAIN_FROM_RGB)
  return _clip(jnp.exp(-mix_channels(stains * scale + shift, _RGB_FROM_STAIN)))


def greyscale(key, image, magnitude=1.0, fill_mode=None):
  """Blends towards the luma image by `magnitude` (1: fully grey)."""
  del key
  grey = pix.rgb_to_grayscale(image, keep_dims=True)
  return image + magnitude * (grey - image)


def solarize(key, image, magnitude=1.0, fill_mode=None):
  """Inverts the pixels above a threshold that falls from 1 to 0.5 as magnitude grows."""
  del key
  return pix.solarize(image, 1.0 - 0.5 * magnitude)


def posterize(key, image, magnitude=1.0, fill_mode=None):
  """Keeps 8 - round(4m) bits per channel."""
  del key
  levels = 2.0 ** (8.0 - jnp.round(4.0 * magnitude)) - 1.0
  return jnp.round(image * levels) / levels


def autocontrast(key, image, magnitude=1.0, fill_mode=None):
  """Stretches each channel to the full [0, 1] range."""
  del key, magnitude
  low = image.min(axis=(0, 1))
  high = image.max(axis=(0, 1))
  return jnp.where(high > low, (image - low) / jnp.maximum(high - low, 1e-6), image)


def equalize(key, image, magnitude=1.0, fill_mode=None):
  """Histogram equalisation per channel over 256 levels (as PIL's ImageOps.equalize): each level
  goes to its cumulative frequency, the lowest level present to 0."""
  del key, magnitude
  levels = jnp.clip(jnp.round(image * 255.0), 0, 255).astype(jnp.int32)
  flat = levels.reshape(-1, image.shape[-1])
  n = flat.shape[0]

  def channel(values):
    histogram = jnp.zeros(256, jnp.float32).at[values].add(1.0)
    cdf = jnp.cumsum(histogram)
    cdf_min = cdf[values.min()]
    mapped = (cdf[values] - cdf_min) / jnp.maximum(n - cdf_min, 1.0)
    return jnp.where(cdf_min < n, mapped, values / 255.0)

  return jax.vmap(channel, in_axes=1, out_axes=1)(flat).reshape(image.shape)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0  # PIL's ImageFilter.SMOOTH


def sharpness(key, image, magnitude=1.0, fill_mode=None):
  """Blends with a smoothed copy by 1 +- 0.9m: below 1 blurs, above 1 sharpens (as PIL does)."""
  smooth = convolve(image, jnp.asarray(_SMOOTH))
  factor = 1.0 + jnp.where(jax.random.bernoulli(key), 1.0, -1.0) * 0.9 * magnitude
  return _clip(smooth + factor * (image - smooth))
