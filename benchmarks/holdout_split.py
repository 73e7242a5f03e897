"""Set aside a held-out test part of a class-folder data set, as two folders of symbolic links.

Recipes are tuned on the training part's own train/validation split and judged once on the held-out
part, which no run, threshold or choice has seen:

  python benchmarks/holdout_split.py ../shared/data/pbc96 /work/heldout --fraction 0.15 --seed 2026
  python main.py --config configs/X.py --config.data.source=/work/heldout/train ...
  python main.py --mode=eval --workdir RUN --data /work/heldout/test --corruptions=all

The draw is per class (stratified) and depends only on the sorted file names, the fraction and the seed.
"""

import argparse
import os
import sys

import numpy as np


def split(source: str, target: str, fraction: float, seed: int) -> dict:
  """Links every image of `source/<class>/` into `target/train/<class>/` or `target/test/<class>/`;
  returns {class: (train count, test count)}. Refuses a non-empty target."""
  if os.path.exists(target) and os.listdir(target):
    raise SystemExit(f"{target}: exists and is not empty; choose another folder")
  rng = np.random.default_rng(seed)
  counts = {}
  for name in sorted(d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d))):
    files = sorted(f for f in os.listdir(os.path.join(source, name)) if not f.startswith("."))
    test = set(rng.choice(len(files), size=round(fraction * len(files)), replace=False).tolist())
    for part in ("train", "test"):
      os.makedirs(os.path.join(target, part, name))
    for i, file in enumerate(files):
      part = "test" if i in test else "train"
      os.symlink(os.path.abspath(os.path.join(source, name, file)), os.path.join(target, part, name, file))
    counts[name] = (len(files) - len(test), len(test))
  return counts


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("source", help="a folder of class folders")
  parser.add_argument("target", help="where train/ and test/ are written")
  parser.add_argument("--fraction", type=float, default=0.15, help="share of each class held out")
  parser.add_argument("--seed", type=int, default=2026)
  args = parser.parse_args(argv)
  counts = split(args.source, args.target, args.fraction, args.seed)
  for name, (train, test) in counts.items():
    print(f"{name:>14} {train:6d} train {test:5d} held out")
  print(f"{sum(t for t, _ in counts.values())} train, {sum(h for _, h in counts.values())} held out -> {args.target}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
