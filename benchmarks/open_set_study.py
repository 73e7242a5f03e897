"""Compares the open-set rejection methods (bloodcell_jax/open_set.py) of a trained run on real
cells it never saw and on images that are not cells of its classes, built here:

- pictures: random crops (at random scales) of unrelated pictures found on this machine
  (photographs, icons, diagrams; `--pictures` directories, PNG/JPG, read recursively);
- blends: held-out cells alpha-blended with such a picture (alpha 0.3-0.7), like the planted
  outliers of the course file;
- blanks: flat frames of a random colour with mild noise;
- other magnification: a held-out cell's centre enlarged 3x, or four cells shrunk into one frame.
Real cells are held-out cells as they are, and the same cells through the project's corruptions
(severity 0.8, each cell one corruption kind in turn), which must not be rejected wholesale.

For each method: fitted as `--mode=calibrate` fits it (bloodcell_jax.inference.fit_trust: statistics
from the run's training split as it is and augmented, threshold from its validation split at
`--false_rejection`), then the share rejected of each kind.

  python benchmarks/open_set_study.py --workdir /work/runs/mnv3 --cells /work/heldout/test
"""

import argparse
import glob
import os
import time

import numpy as np
from PIL import Image

from bloodcell_jax import open_set
from bloodcell_jax.config import load_run_config
from bloodcell_jax.data.prepare import load_eval_set
from bloodcell_jax.data.sources import ImageSet
from bloodcell_jax.inference import RestoredModel, fit_trust
from bloodcell_jax.robustness import CORRUPTIONS, corrupt

DEFAULT_PICTURES = ["/usr/share/icons", "/usr/share/doc", "/usr/share/backgrounds"]


def _pictures(directories: list[str], limit: int = 400) -> list[np.ndarray]:
  paths = sorted(p for d in directories for ext in ("png", "jpg", "jpeg")
                 for p in glob.glob(os.path.join(d, "**", f"*.{ext}"), recursive=True))
  pictures = []
  for path in paths:
    try:
      with Image.open(path) as image:
        if min(image.size) < 64:
          continue
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        pictures.append(np.asarray(Image.alpha_composite(background, rgba).convert("RGB")))
    except Exception:
      continue
    if len(pictures) >= limit:
      break
  return pictures


def _crop(picture: np.ndarray, size: int, rng) -> np.ndarray:
  h, w = picture.shape[:2]
  side = int(rng.uniform(0.25, 1.0) * min(h, w))
  y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
  return np.asarray(Image.fromarray(picture[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC))


def contaminants(cells: np.ndarray, pictures: list[np.ndarray], count: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  size = cells.shape[1]
  crops = np.stack([_crop(pictures[rng.integers(len(pictures))], size, rng) for _ in range(count)])
  chosen = cells[rng.integers(len(cells), size=count)].astype(np.float32)
  alpha = rng.uniform(0.3, 0.7, (count, 1, 1, 1))
  blends = np.clip(np.round((1 - alpha) * chosen + alpha * crops), 0, 255).astype(np.uint8)
  colours = rng.integers(0, 256, (count, 1, 1, 3))
  blanks = np.clip(colours + rng.normal(0, 3, (count, size, size, 3)), 0, 255).astype(np.uint8)
  third = size // 3
  zoomed = np.stack([np.asarray(Image.fromarray(c[third:2 * third, third:2 * third]).resize((size, size), Image.BICUBIC))
                     for c in cells[rng.integers(len(cells), size=count // 2)]])
  half = size // 2
  small = [np.asarray(Image.fromarray(c).resize((half, half), Image.BICUBIC))
           for c in cells[rng.integers(len(cells), size=4 * (count - count // 2))]]
  tiled = np.stack([np.concatenate([np.concatenate(small[4 * i:4 * i + 2], 1),
                                     np.concatenate(small[4 * i + 2:4 * i + 4], 1)], 0)
                    for i in range(count - count // 2)])
  return {"pictures": crops, "blends": blends, "blanks": blanks,
          "other magnification": np.concatenate([zoomed, tiled])}


def corrupted_copy(cells: ImageSet, severity: float) -> ImageSet:
  kinds = [c for c in CORRUPTIONS if c != "mixed"]
  parts = [corrupt(cells.subset(np.arange(i, len(cells), len(kinds))), kind, severity) for i, kind in enumerate(kinds)]
  return ImageSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("images", "labels", "ids")))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--cells", required=True, help="held-out labelled cells (a class folder or npz)")
  parser.add_argument("--pictures", nargs="*", default=DEFAULT_PICTURES)
  parser.add_argument("--count", type=int, default=1000, help="images of each contaminant kind")
  parser.add_argument("--false_rejection", type=float, default=0.01)
  parser.add_argument("--severity", type=float, default=0.8)
  parser.add_argument("--methods", nargs="*", default=list(open_set.METHODS))
  args = parser.parse_args()

  start = time.time()
  config = load_run_config(args.workdir)
  config.reject.false_rejection = args.false_rejection
  cells = load_eval_set(args.cells, config.data.image_size)
  model = RestoredModel(config, args.workdir, "best", "none", with_trust=False)
  pictures = _pictures(args.pictures)
  sets = {"held-out cells": cells, "corrupted held-out cells": corrupted_copy(cells, args.severity)}
  for name, images in contaminants(cells.images, pictures, args.count).items():
    sets[name] = ImageSet(images, np.full(len(images), -1, np.int32), np.array([f"#{i}" for i in range(len(images))]))
  outputs = {name: model.evaluate(s, "none")[1] for name, s in sets.items()}
  accuracy = float((outputs["held-out cells"]["probs"].argmax(-1) == cells.labels).mean())
  print(f"run {args.workdir}: {len(cells)} held-out cells (accuracy {accuracy:.4f}); {len(pictures)} source "
        f"pictures; {args.count} per contaminant kind; stages {[b.shape[1] for b in outputs['held-out cells']['features']]}")
  header = ["method"] + list(sets) + ["non-cells (mean of kinds)", "fit (s)"]
  rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for method in args.methods:
    config.reject.method = method
    began = time.time()
    rejector = fit_trust(args.workdir, "best", config, "none", save=False).rejector
    fit_seconds = time.time() - began
    rates = {}
    for name, out in outputs.items():
      scores = open_set.scores(method, rejector.arrays, out["features"], out["logits"])
      rates[name] = float((scores > rejector.threshold).mean())
    kinds = [k for k in sets if "cells" not in k]
    mean = float(np.mean([rates[k] for k in kinds]))
    rows.append("| " + " | ".join([method] + [f"{rates[k]:.1%}" for k in sets] + [f"{mean:.1%}", f"{fit_seconds:.0f}"])
                + " |")
  print("\n".join(rows))
  print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
  main()
