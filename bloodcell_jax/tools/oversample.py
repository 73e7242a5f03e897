"""Offline oversampling: raise every class to a target count with geometric augmentation, as the
report did (each class to about 5,500 images), and write the result as a new npz file.

  python -m bloodcell_jax.tools.oversample --data ../shared/data/pbc96 --target 5500 --output balanced.npz

Originals are kept as they are; the added images are random dihedral flips/rotations plus a random
affine warp (rotation, scale, shear; mirrored edges) of randomly chosen originals of the same
class, made on the accelerator with the training ops. Output: keys `images` (N, H, W, 3) uint8 and
`labels` (N, 1), the course file's layout, plus `source_index` (the original each image is, or was
made from) and `augmented` flags. Classes already
above the target are left as they are (never subsampled). Written to a temporary name, then renamed.
"""

import argparse
import os
import sys

import numpy as np

from bloodcell_jax.atomic_files import write_npz_atomic
from bloodcell_jax.augment import augment_uint8
from bloodcell_jax.classes import CLASS_NAMES, NUM_CLASSES
from bloodcell_jax.data.sources import load_source
from bloodcell_jax.errors import UserInputError, cli_exit_status

GEOMETRIC = "dihedral(1, 1) affine(1, 0.5)"


def oversample(images: np.ndarray, labels: np.ndarray, target: int, seed: int = 0,
               policy: str = GEOMETRIC) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images, labels, source index) with every class present raised to at least `target` images."""
  rng = np.random.default_rng(seed)
  sources = [np.arange(len(labels))]
  for c in range(NUM_CLASSES):
    members = np.flatnonzero(labels == c)
    if 0 < len(members) < target:
      sources.append(rng.choice(members, target - len(members)))
  source_index = np.concatenate(sources)
  made = augment_uint8(images[source_index[len(labels):]], policy, seed)
  all_images = np.concatenate([images, made])
  return all_images, labels[source_index], source_index


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bloodcell_jax.tools.oversample", description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", required=True, help="npz file or folder of class folders")
  parser.add_argument("--target", type=int, required=True, help="images per class after oversampling")
  parser.add_argument("--output", required=True, help="the new .npz file")
  parser.add_argument("--image_size", type=int, default=96)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  def run():
    if not args.output.endswith(".npz"):
      raise UserInputError(f"{args.output}: the output must be an .npz file")
    if os.path.abspath(args.output) == os.path.abspath(args.data):
      raise UserInputError(f"{args.output}: would overwrite the input; choose another name")
    if args.target < 1:
      raise UserInputError(f"--target={args.target} must be at least 1")
    sets = load_source(args.data, args.image_size, min_classes=1)
    pool = sets.get("train", sets.get("all"))
    images, labels, source_index = oversample(pool.images, pool.labels, args.target, args.seed)
    write_npz_atomic(args.output, images=images, labels=labels[:, None].astype(np.int64), source_index=source_index,
                     augmented=np.arange(len(labels)) >= len(pool.labels))
    before = np.bincount(pool.labels, minlength=NUM_CLASSES)
    after = np.bincount(labels, minlength=NUM_CLASSES)
    for name, b, a in zip(CLASS_NAMES, before, after):
      print(f"  {name:<14} {b:>6} -> {a:>6}")
    print(f"wrote {args.output}: {len(labels)} images ({len(labels) - len(pool.labels)} added)")

  return cli_exit_status(run)


if __name__ == "__main__":
  sys.exit(main())
