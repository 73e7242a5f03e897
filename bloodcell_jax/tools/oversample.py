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

import os
import sys

import numpy as np
from absl import flags

from bloodcell_jax.atomic_files import write_npz_atomic
from bloodcell_jax.augment import augment_uint8
from bloodcell_jax.classes import CLASS_NAMES, NUM_CLASSES
from bloodcell_jax.data.sources import load_source
from bloodcell_jax.errors import UserInputError
from bloodcell_jax import cli

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


FLAGS = flags.FlagValues()  # this tool's own, not absl's global FLAGS (main.py's); see bloodcell_jax/cli.py
flags.DEFINE_string("data", None, "npz file or folder of class folders.", flag_values=FLAGS)
flags.DEFINE_integer("target", None, "Images per class after oversampling.", flag_values=FLAGS)
flags.DEFINE_string("output", None, "The new .npz file.", flag_values=FLAGS)
flags.DEFINE_integer("image_size", 96, "Image size the source is read at.", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of the choice of originals and of the augmentation.", flag_values=FLAGS)
flags.mark_flags_as_required(["data", "target", "output"], flag_values=FLAGS)


def main(argv=None) -> int:
  def run():
    if not FLAGS.output.endswith(".npz"):
      raise UserInputError(f"{FLAGS.output}: the output must be an .npz file")
    if os.path.abspath(FLAGS.output) == os.path.abspath(FLAGS.data):
      raise UserInputError(f"{FLAGS.output}: would overwrite the input; choose another name")
    if FLAGS.target < 1:
      raise UserInputError(f"--target={FLAGS.target} must be at least 1")
    sets = load_source(FLAGS.data, FLAGS.image_size, min_classes=1)
    pool = sets.get("train", sets.get("all"))
    images, labels, source_index = oversample(pool.images, pool.labels, FLAGS.target, FLAGS.seed)
    write_npz_atomic(FLAGS.output, images=images, labels=labels[:, None].astype(np.int64), source_index=source_index,
                     augmented=np.arange(len(labels)) >= len(pool.labels))
    before = np.bincount(pool.labels, minlength=NUM_CLASSES)
    after = np.bincount(labels, minlength=NUM_CLASSES)
    for name, b, a in zip(CLASS_NAMES, before, after):
      print(f"  {name:<14} {b:>6} -> {a:>6}")
    print(f"wrote {FLAGS.output}: {len(labels)} images ({len(labels) - len(pool.labels)} added)")

  return cli.run("python -m bloodcell_jax.tools.oversample", __doc__, FLAGS, argv, run)


if __name__ == "__main__":
  sys.exit(main())
