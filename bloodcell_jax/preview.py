"""`--mode=preview`: a PNG grid that shows what augmentation policies do to real images.

One block per policy; in each block a row per example image (one per class, from the configured
training data): the original, then N augmented versions, class name in the left margin. Made by
the same jitted `augment_batch` the train step runs (MixUp/CutMix included), so what you see is
what the model sees.
"""

import io
import os

import jax
import numpy as np
from PIL import Image, ImageDraw

from bloodcell_jax.atomic_files import write_bytes_atomic
from bloodcell_jax.augment import augment_batch, parse
from bloodcell_jax.classes import CLASS_NAMES, NUM_CLASSES
from bloodcell_jax.data.prepare import load_train_val
from bloodcell_jax.errors import UserInputError

_MARGIN = 120  # pixels for the class name
_TITLE = 22
_GAP = 4


def pick_examples(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Indices of up to `per_class` random examples of each class present, in class order."""
  rng = np.random.default_rng(seed)
  picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(NUM_CLASSES)]
  return np.concatenate(picked).astype(int)


def render_grid(images: np.ndarray, labels: np.ndarray, policies: list[str], columns: int, fill_mode: str,
                seed: int = 0, scale: int = 1) -> Image.Image:
  """The grid as a PIL image; `images` uint8 (N, H, W, 3)."""
  n, h, w = images.shape[:3]
  cell_w, cell_h = w * scale + _GAP, h * scale + _GAP
  block_h = _TITLE + n * cell_h
  canvas = Image.new("RGB", (_MARGIN + (columns + 1) * cell_w, len(policies) * block_h), "white")
  draw = ImageDraw.Draw(canvas)
  targets = jax.nn.one_hot(labels, NUM_CLASSES)
  run = jax.jit(augment_batch, static_argnums=(3, 4))
  for b, policy in enumerate(policies):
    top = b * block_h
    draw.text((4, top + 4), f"policy: {policy}   (first column: original)", fill="black")
    versions = [images]
    for c in range(columns):
      out, _ = run(jax.random.PRNGKey(seed * 1000 + c), images, targets, policy, fill_mode)
      versions.append(np.clip(np.round(np.asarray(out) * 255), 0, 255).astype(np.uint8))
    for r in range(n):
      y = top + _TITLE + r * cell_h
      draw.text((4, y + h * scale // 2 - 6), CLASS_NAMES[labels[r]], fill="black")
      for c, version in enumerate(versions):
        tile = Image.fromarray(version[r]).resize((w * scale, h * scale), Image.NEAREST)
        canvas.paste(tile, (_MARGIN + c * cell_w, y))
  return canvas


def run_preview(config, output: str, policies: list[str] | None = None, columns: int = 6,
                per_class: int = 1) -> str:
  """Writes the grid for `policies` (default: the config's, light, medium, heavy) to `output`."""
  policies = policies or list(dict.fromkeys([config.data.augment, "light", "medium", "heavy"]))
  for policy in policies:
    try:
      parse(policy)
    except ValueError as e:
      raise UserInputError(f"--preview_policy: {e}") from None
  if columns < 1 or per_class < 1:
    raise UserInputError("--preview_columns and --preview_per_class must be at least 1")
  data = load_train_val(config.data).train
  index = pick_examples(data.labels, per_class, config.seed)
  grid = render_grid(data.images[index], data.labels[index], policies, columns, config.data.fill_mode,
                     config.seed, scale=max(1, 96 // config.data.image_size))
  buffer = io.BytesIO()
  grid.save(buffer, format="PNG")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  write_bytes_atomic(output, buffer.getvalue())
  print(f"wrote {output}: {len(policies)} policies x {len(index)} images x {columns} augmented versions")
  return output
