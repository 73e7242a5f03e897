"""Degradations that real microscopes and image pipelines produce: blur (defocus, Gaussian,
motion), sensor noise, pixelation, JPEG blocking, uneven illumination, dust and bubbles, and
random erasing. Same signature as the other ops; all keep the image in [0, 1].

These double as the corruption suite for robustness evaluation (`corrupt` in policies).
"""

import jax
import jax.numpy as jnp
import numpy as np

from bloodcell_jax.augment.colour import mix_channels
from bloodcell_jax.augment.filters import convolve, convolve_separable, gaussian_taps
from bloodcell_jax.augment.sampling import sample

_BLUR_RADIUS = 4  # 9-tap kernels; enough for sigma up to ~2 px at 96x96


def _uniform(key, low, high, shape=()):
  return jax.random.uniform(key, shape, minval=low, maxval=high)


def gaussian_blur(key, image, magnitude=1.0, fill_mode=None):
  """Gaussian blur with sigma uniform in [0.3, 0.3 + 1.7m] pixels."""
  sigma = _uniform(key, 0.3, 0.3 + 1.7 * magnitude)
  return convolve_separable(image, gaussian_taps(sigma, _BLUR_RADIUS))


def defocus(key, image, magnitude=1.0, fill_mode=None):
  """Out-of-focus blur: a disc (pillbox) kernel of radius uniform in [0.5, 0.5 + 2.5m] pixels."""
  radius = _uniform(key, 0.5, 0.5 + 2.5 * magnitude)
  offsets = jnp.arange(-3, 4, dtype=jnp.float32)
  distance = jnp.hypot(offsets[:, None], offsets[None, :])
  kernel = jnp.clip(radius + 0.5 - distance, 0.0, 1.0)  # anti-aliased disc edge
  return convolve(image, kernel / kernel.sum())


def motion_blur(key, image, magnitude=1.0, fill_mode=None):
  """Blur along a line of random direction and length uniform in [1, 1 + 5m] pixels."""
  k_length, k_angle = jax.random.split(key)
  half = _uniform(k_length, 1.0, 1.0 + 5.0 * magnitude) / 2
  angle = _uniform(k_angle, 0.0, jnp.pi)
  direction = jnp.array([jnp.sin(angle), jnp.cos(angle)])
  offsets = jnp.arange(-3, 4, dtype=jnp.float32)
  points = jnp.stack(jnp.meshgrid(offsets, offsets, indexing="ij"), axis=-1)
  along = jnp.clip(points @ direction, -half, half)
  distance = jnp.linalg.norm(points - along[..., None] * direction, axis=-1)  # to the segment
  kernel = jnp.clip(1.0 - distance, 0.0, 1.0)
  return convolve(image, kernel / kernel.sum())


def hashed_bits(key: jax.Array, shape: tuple) -> jax.Array:
  """uint32 noise from a counter hash (MurmurHash3's finaliser) seeded by `key`.

  Per pixel, about 5x cheaper than `jax.random.bits` (threefry) on CPU, and statistically plenty
  for image noise; keys still decide everything, so outputs stay reproducible.
  """
  seed = jax.random.bits(key, (), jnp.uint32)
  h = jnp.arange(int(np.prod(shape)), dtype=jnp.uint32) * jnp.uint32(0x9E3779B9) + seed
  h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
  return (h ^ (h >> 16)).reshape(shape)


def hashed_normal(key: jax.Array, shape: tuple) -> jax.Array:
  """Approximately standard normal: the sum of the four bytes of `hashed_bits` (Irwin-Hall, n=4)."""
  bits = hashed_bits(key, shape)
  total = sum(((bits >> (8 * i)) & 255).astype(jnp.float32) for i in range(4))
  return (total - 510.0) / np.float32(np.sqrt(4 * (256**2 - 1) / 12))


def noise(key, image, magnitude=1.0, fill_mode=None):
  """Read plus shot noise: sigma uniform in [0, 0.08m] at mid-grey, larger in bright pixels."""
  k_sigma, k_noise = jax.random.split(key)
  sigma = _uniform(k_sigma, 0.0, 0.08 * magnitude)
  scale = sigma * jnp.sqrt((1.0 + 2.0 * jnp.maximum(image, 0.0)) / 2.0)  # read + shot variance
  return jnp.clip(image + scale * hashed_normal(k_noise, image.shape), 0.0, 1.0)


def pixelate(key, image, magnitude=1.0, fill_mode=None):
  """Blocks of side uniform in [1, 1 + 4m] pixels, each showing its centre pixel."""
  block = _uniform(key, 1.0, 1.0 + 4.0 * magnitude)
  h, w = image.shape[:2]
  ys = (jnp.floor(jnp.arange(h) / block) + 0.5) * block - 0.5
  xs = (jnp.floor(jnp.arange(w) / block) + 0.5) * block - 0.5
  return sample(image, ys[:, None] * jnp.ones((1, w)), jnp.ones((h, 1)) * xs[None, :], "nearest", order=0)


# JPEG (ITU-T T.81 Annex K) quantisation tables and the IJG quality scaling.
_LUMA_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float32).reshape(8, 8)
_CHROMA_TABLE = np.full((8, 8), 99.0, np.float32)
_CHROMA_TABLE[:4, :4] = np.array([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]])
_DCT = np.array([[np.sqrt((1 if k == 0 else 2) / 8) * np.cos((2 * n + 1) * k * np.pi / 16) for n in range(8)]
                 for k in range(8)], np.float32)  # orthonormal DCT-II
_YCBCR_FROM_RGB = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                           np.float32)
_RGB_FROM_YCBCR = np.linalg.inv(_YCBCR_FROM_RGB).T.astype(np.float32)


def jpeg_quality_tables(quality: jax.Array) -> jax.Array:
  """(3, 8, 8) luma/chroma/chroma tables for a quality in [1, 100], as libjpeg scales them."""
  quality = jnp.clip(quality, 1.0, 100.0)
  scale = jnp.where(quality < 50, 5000.0 / quality, 200.0 - 2.0 * quality)
  tables = jnp.stack([_LUMA_TABLE, _CHROMA_TABLE, _CHROMA_TABLE])
  return jnp.clip(jnp.floor((tables * scale + 50.0) / 100.0), 1.0, 255.0)


def jpeg_compress(image: jax.Array, quality: jax.Array) -> jax.Array:
  """JPEG's lossy part: YCbCr, 4:2:0 chroma, 8x8 DCT quantised with the quality's tables."""
  h, w = image.shape[:2]
  ph, pw = -h % 16, -w % 16
  x = jnp.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge") * 255.0
  ycc = mix_channels(x, _YCBCR_FROM_RGB.T)
  hh, ww = ycc.shape[:2]
  chroma = ycc[..., 1:].reshape(hh // 2, 2, ww // 2, 2, 2).mean(axis=(1, 3))
  chroma = jnp.repeat(jnp.repeat(chroma, 2, axis=0), 2, axis=1)
  ycc = jnp.concatenate([ycc[..., :1] - 128.0, chroma], axis=-1)
  blocks = ycc.reshape(hh // 8, 8, ww // 8, 8, 3)
  coefficients = jnp.einsum("ui,aibjc,vj->abuvc", _DCT, blocks, _DCT)
  tables = jnp.moveaxis(jpeg_quality_tables(quality), 0, -1)  # (8, 8, 3)
  coefficients = jnp.round(coefficients / tables) * tables
  blocks = jnp.einsum("ui,abuvc,vj->aibjc", _DCT, coefficients, _DCT).reshape(hh, ww, 3)
  ycc = blocks + jnp.array([128.0, 0.0, 0.0])
  rgb = mix_channels(ycc, _RGB_FROM_YCBCR)
  return jnp.clip(rgb[:h, :w] / 255.0, 0.0, 1.0)


def jpeg(key, image, magnitude=1.0, fill_mode=None):
  """JPEG artefacts at a quality uniform in [95 - 85m, 95]."""
  return jpeg_compress(image, _uniform(key, 95.0 - 85.0 * magnitude, 95.0))


def illumination(key, image, magnitude=1.0, fill_mode=None):
  """Uneven lighting: a linear gradient of +-35% across the image in a random direction and a
  vignette darkening the corners by up to 40%, at magnitude 1."""
  k_angle, k_slope, k_vignette = jax.random.split(key, 3)
  h, w = image.shape[:2]
  y = (jnp.arange(h) - (h - 1) / 2) / (h / 2)
  x = (jnp.arange(w) - (w - 1) / 2) / (w / 2)
  angle = _uniform(k_angle, 0.0, 2 * jnp.pi)
  ramp = jnp.sin(angle) * y[:, None] + jnp.cos(angle) * x[None, :]
  radius2 = (jnp.square(y[:, None]) + jnp.square(x[None, :])) / 2
  field = (1.0 + _uniform(k_slope, -0.35, 0.35) * magnitude * ramp
           - _uniform(k_vignette, 0.0, 0.4) * magnitude * radius2)
  return jnp.clip(image * field[..., None], 0.0, 1.0)


_SPOTS = 4


def occlusion(key, image, magnitude=1.0, fill_mode=None):
  """Up to 4 soft discs: dark dust specks or bright-rimmed air bubbles, radius up to 3% + 10%m of
  the image side, each present with probability 1/2."""
  h, w = image.shape[:2]
  k_on, k_centre, k_radius, k_kind, k_alpha = jax.random.split(key, 5)
  on = jax.random.bernoulli(k_on, 0.5, (_SPOTS,))
  centre = jax.random.uniform(k_centre, (_SPOTS, 2)) * jnp.array([h, w])
  radius = _uniform(k_radius, 0.02, 0.03 + 0.1 * magnitude, (_SPOTS,)) * min(h, w)
  bubble = jax.random.bernoulli(k_kind, 0.3, (_SPOTS,))
  alpha = _uniform(k_alpha, 0.4, 0.9, (_SPOTS,))
  yy, xx = jnp.arange(h, dtype=jnp.float32)[:, None], jnp.arange(w, dtype=jnp.float32)[None, :]
  for i in range(_SPOTS):
    distance = jnp.hypot(yy - centre[i, 0], xx - centre[i, 1])
    inside = jnp.clip(radius[i] - distance + 0.5, 0.0, 1.0)
    rim = jnp.clip(1.5 - jnp.abs(distance - radius[i]), 0.0, 1.0)
    dust = image * (1.0 - alpha[i] * inside[..., None])
    bright = jnp.clip(image + alpha[i] * (0.3 * inside + 0.5 * rim)[..., None], 0.0, 1.0)
    image = jnp.where(on[i], jnp.where(bubble[i], bright, dust), image)
  return image


_DEPOSITS = 8


def deposits(key, image, magnitude=1.0, fill_mode=None):
  """Stain precipitate on the smear: up to 8 opaque blobs (each two overlapping discs, so not round)
  in dark violet to blue-black, radius 1.5% to 1.5% + 5%m of the side, opacity 0.6-1; the number
  present grows with magnitude. Unlike grey dust they have the hue of nuclei and granules."""
  h, w = image.shape[:2]
  k_on, k_centre, k_offset, k_radius, k_colour, k_alpha = jax.random.split(key, 6)
  on = jax.random.uniform(k_on, (_DEPOSITS,)) < 0.25 + 0.75 * magnitude * jnp.linspace(1.0, 0.3, _DEPOSITS)
  centre = jax.random.uniform(k_centre, (_DEPOSITS, 2)) * jnp.array([h, w])
  radius = _uniform(k_radius, 0.015, 0.015 + 0.05 * magnitude, (_DEPOSITS,)) * min(h, w)
  offset = jax.random.normal(k_offset, (_DEPOSITS, 2)) * radius[:, None] * 0.6
  base = jnp.array([0.22, 0.10, 0.32])  # haematoxylin-violet, darkened
  colour = jnp.clip(base * _uniform(k_colour, 0.3, 1.4, (_DEPOSITS, 1)), 0.0, 1.0)
  alpha = _uniform(k_alpha, 0.6, 1.0, (_DEPOSITS,))
  yy, xx = jnp.arange(h, dtype=jnp.float32)[:, None], jnp.arange(w, dtype=jnp.float32)[None, :]
  for i in range(_DEPOSITS):
    first = jnp.clip(radius[i] - jnp.hypot(yy - centre[i, 0], xx - centre[i, 1]) + 0.5, 0.0, 1.0)
    second = jnp.clip(0.7 * radius[i] - jnp.hypot(yy - centre[i, 0] - offset[i, 0], xx - centre[i, 1] - offset[i, 1])
                      + 0.5, 0.0, 1.0)
    cover = (alpha[i] * jnp.maximum(first, second) * on[i])[..., None]
    image = image * (1.0 - cover) + colour[i] * cover
  return image


def bubbles(key, image, magnitude=1.0, fill_mode=None):
  """An air bubble under the coverslip: a translucent disc of radius 10% to 10% + 25%m of the side,
  anywhere (often across the cell), whose inside is brightened and slightly washed out and whose
  edge is a dark refracting ring 1-3 px wide with a bright inner highlight."""
  h, w = image.shape[:2]
  k_centre, k_radius, k_width, k_strength = jax.random.split(key, 4)
  centre = jax.random.uniform(k_centre, (2,)) * jnp.array([h, w])
  radius = _uniform(k_radius, 0.10, 0.10 + 0.25 * magnitude) * min(h, w)
  width = _uniform(k_width, 1.0, 3.0)
  strength = _uniform(k_strength, 0.4, 0.9) * jnp.minimum(1.0, 0.3 + magnitude)
  yy, xx = jnp.arange(h, dtype=jnp.float32)[:, None], jnp.arange(w, dtype=jnp.float32)[None, :]
  distance = jnp.hypot(yy - centre[0], xx - centre[1])
  inside = jnp.clip(radius - distance + 0.5, 0.0, 1.0)[..., None]
  ring = jnp.exp(-jnp.square((distance - radius) / width))[..., None]
  highlight = jnp.exp(-jnp.square((distance - (radius - 1.5 * width)) / (0.7 * width)))[..., None]
  washed = image + inside * strength * 0.35 * (1.0 - image)
  return jnp.clip(washed * (1.0 - 0.8 * strength * ring) + 0.4 * strength * highlight, 0.0, 1.0)


def cutout(key, image, magnitude=1.0, fill_mode=None):
  """Random erasing: a rectangle of 2% to 2% + 30%m of the area (aspect 1/3..3) filled with noise."""
  h, w = image.shape[:2]
  k_area, k_ratio, k_pos, k_fill = jax.random.split(key, 4)
  area = _uniform(k_area, 0.02, 0.02 + 0.3 * magnitude) * h * w
  ratio = jnp.exp(_uniform(k_ratio, -jnp.log(3.0), jnp.log(3.0)))
  eh = jnp.minimum(jnp.sqrt(area * ratio), h)
  ew = jnp.minimum(jnp.sqrt(area / ratio), w)
  top = jax.random.uniform(k_pos, (2,)) * jnp.array([h - eh, w - ew])
  yy, xx = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = (yy >= top[0]) & (yy < top[0] + eh) & (xx >= top[1]) & (xx < top[1] + ew)
  fill = hashed_bits(k_fill, image.shape).astype(jnp.float32) / np.float32(2**32)
  return jnp.where(box[..., None], fill, image)
