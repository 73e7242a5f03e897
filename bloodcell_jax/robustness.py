"""Corrupted copies of an evaluation set, made with the augmentation library's degradation ops.

The report's hidden test set was blurred, stained, JPEG-compressed and shifted in brightness and
contrast; `--mode=eval --corruptions=all` measures accuracy under each such degradation (and a
mix of three at once) so robustness is a number, not a hope. Corrupted images are rounded back to
uint8, as a corrupted file on disk would be, and are the same for every model (fixed seed).
"""

from bloodcell_jax.augment import DEGRADATIONS, IMAGE_OPS, augment_uint8
from bloodcell_jax.data.sources import ImageSet

CORRUPTIONS = DEGRADATIONS + ("mixed",)


def corruption_policy(name: str, severity: float) -> str:
  """The policy string that applies corruption `name` to every image at magnitude `severity`."""
  if name == "mixed":  # three degradations of different kinds at once
    return f"defocus(1, {severity}) stain(1, {severity}) jpeg(1, {severity})"
  if name not in IMAGE_OPS:
    raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
  return f"{name}(1, {severity})"


def corrupt(data: ImageSet, name: str, severity: float, seed: int = 0) -> ImageSet:
  """A copy of `data` with corruption `name` applied to every image (uint8 out)."""
  return ImageSet(augment_uint8(data.images, corruption_policy(name, severity), seed), data.labels, data.ids)
