"""Corrupted copies of an evaluation set, made with the augmentation library's degradation ops.

The report's hidden test set was blurred, stained, JPEG-compressed and shifted in brightness and
contrast; `--mode=eval --corruptions=all` measures accuracy under each such degradation (and a
mix of three at once) so robustness is a number, not a hope. Corrupted images are rounded back to
uint8, as a corrupted file on disk would be, and are the same for every model (fixed seed).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bloodcell_jax.augment import DEGRADATIONS, IMAGE_OPS, augment_batch
from bloodcell_jax.data.sources import ImageSet

CORRUPTIONS = DEGRADATIONS + ("mixed",)
_CHUNK = 256


def corruption_policy(name: str, severity: float) -> str:
  """The policy string that applies corruption `name` to every image at magnitude `severity`."""
  if name == "mixed":  # three degradations of different kinds at once
    return f"defocus(1, {severity}) stain(1, {severity}) jpeg(1, {severity})"
  if name not in IMAGE_OPS:
    raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
  return f"{name}(1, {severity})"


@functools.lru_cache(maxsize=32)
def _corrupter(policy: str):
  return jax.jit(lambda key, images: augment_batch(key, images, jnp.zeros((images.shape[0], 1)), policy)[0])


def corrupt(data: ImageSet, name: str, severity: float, seed: int = 0) -> ImageSet:
  """A copy of `data` with corruption `name` applied to every image (uint8 out)."""
  run = _corrupter(corruption_policy(name, severity))
  key = jax.random.PRNGKey(seed)
  chunks = []
  for start in range(0, len(data), _CHUNK):
    images = data.images[start:start + _CHUNK]
    padded = np.concatenate([images, np.zeros((_CHUNK - len(images),) + images.shape[1:], np.uint8)])
    out = np.asarray(run(jax.random.fold_in(key, start), padded))[:len(images)]
    chunks.append(np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8))
  return ImageSet(np.concatenate(chunks), data.labels, data.ids)
