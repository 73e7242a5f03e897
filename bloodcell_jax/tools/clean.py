"""python -m bloodcell_jax.tools.clean --data SOURCE [--dry_run] [--output PATH] [thresholds]

Reads a data source (course/MedMNIST npz or a folder of class folders), finds blended non-cell
outliers, exact and near duplicates, blank/saturated images and images of the wrong size or colour
layout (bloodcell_jax/data/hygiene.py), prints a table (kept, removed by reason, per class, and the
class weights training would use), and unless --dry_run writes beside the input:
  <name>_clean.npz or <name>_clean/   the kept images, same format as the input
  <that>.manifest.json                every removed image: id, index, label, reason, score, group
  <that>.removed.png                  a contact sheet of what was removed, grouped by reason
  <name>_clean_balanced.npz           with --balance_target N: the kept training images with every
                                      class raised to N by geometric augmentation (oversample.py)
The input is never modified; every output is written under a temporary name and renamed.
"""

import collections
import io
import os
import shutil
import sys
import time

import numpy as np
from absl import flags
from PIL import Image, ImageDraw

from bloodcell_jax.atomic_files import write_bytes_atomic, write_json_atomic, write_npz_atomic
from bloodcell_jax.classes import CLASS_NAMES, NUM_CLASSES
from bloodcell_jax.data.hygiene import Thresholds, find_problems
from bloodcell_jax.data.sources import load_source, resolve_path
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.losses import class_weights
from bloodcell_jax import cli
from bloodcell_jax.tools.oversample import oversample

REASONS = ("blended_outlier", "exact_duplicate", "near_duplicate", "blank", "saturated", "colour_layout",
           "wrong_size")


def _file_layout(folder: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(wrong size, wrong colour layout) flags per file of a folder source, from the file headers."""
  sizes, modes = [], []
  for image_id in ids:
    with Image.open(os.path.join(folder, image_id)) as pil:
      sizes.append(pil.size)
      modes.append(pil.mode)
  common = collections.Counter(sizes).most_common(1)[0][0]
  return (np.array([s != common for s in sizes]), np.array([m not in ("RGB", "RGBA") for m in modes]))


def contact_sheet(images: np.ndarray, findings, per_reason: int = 16, tile: int = 64) -> bytes:
  """PNG bytes: one row block per reason, up to `per_reason` removed images each."""
  by_reason = collections.OrderedDict((r, [f for f in findings if f.reason == r]) for r in REASONS)
  by_reason = {r: fs for r, fs in by_reason.items() if fs}
  columns = 8
  rows = sum(-(-min(len(fs), per_reason) // columns) for fs in by_reason.values())
  sheet = Image.new("RGB", (columns * (tile + 2), max(1, rows * (tile + 2) + 18 * len(by_reason))), "white")
  draw = ImageDraw.Draw(sheet)
  y = 0
  for reason, fs in by_reason.items():
    draw.text((2, y + 3), f"{reason}: {len(fs)} removed (first {min(len(fs), per_reason)} shown)", fill="black")
    y += 18
    for k, f in enumerate(fs[:per_reason]):
      tile_image = Image.fromarray(images[f.index]).resize((tile, tile), Image.BILINEAR)
      sheet.paste(tile_image, ((k % columns) * (tile + 2), y + (k // columns) * (tile + 2)))
    y += -(-min(len(fs), per_reason) // columns) * (tile + 2)
  buffer = io.BytesIO()
  sheet.save(buffer, format="PNG")
  return buffer.getvalue()


def summary_table(labels: np.ndarray, findings) -> str:
  removed = collections.defaultdict(collections.Counter)
  for f in findings:
    removed[f.reason][int(labels[f.index])] += 1
  reasons = [r for r in REASONS if r in removed]
  head = f"{'class':<14}{'before':>8}" + "".join(f"{r[:14]:>16}" for r in reasons) + f"{'kept':>8}{'weight':>8}"
  keep = np.ones(len(labels), bool)
  keep[[f.index for f in findings]] = False
  kept_labels = labels[keep]
  weights = class_weights(kept_labels, NUM_CLASSES, "balanced") if len(kept_labels) else np.zeros(NUM_CLASSES)
  lines = [head]
  for c in range(NUM_CLASSES):
    lines.append(f"{CLASS_NAMES[c]:<14}{int((labels == c).sum()):>8}" + "".join(f"{removed[r][c]:>16}" for r in reasons)
                 + f"{int((kept_labels == c).sum()):>8}{weights[c]:>8.3f}")
  lines.append(f"{'total':<14}{len(labels):>8}" + "".join(f"{sum(removed[r].values()):>16}" for r in reasons)
               + f"{len(kept_labels):>8}")
  return "\n".join(lines)


def _output_path(source: str) -> str:
  source = source.rstrip(os.sep)
  stem, ext = os.path.splitext(source)
  return f"{stem}_clean{ext}" if ext == ".npz" else f"{source}_clean"


def _write_npz(source: str, output: str, keep_by_split: dict) -> None:
  with np.load(source) as data:
    arrays = {k: data[k] for k in data.files}
  for prefix, keep in keep_by_split.items():
    for key in list(arrays):
      if key.startswith(prefix) and len(arrays[key]) == len(keep):
        arrays[key] = arrays[key][keep]
  write_npz_atomic(output, **arrays)


def _write_folder(source: str, output: str, kept_ids) -> None:
  tmp = f"{output}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    for image_id in kept_ids:
      target = os.path.join(tmp, image_id)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.copy2(os.path.join(source, image_id), target)
    if os.path.exists(output):
      shutil.rmtree(output)
    os.replace(tmp, output)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def clean(source: str, thresholds: Thresholds = Thresholds(), dry_run: bool = False, output: str | None = None,
          image_size: int = 96, balance_target: int = 0) -> dict:
  """Runs the whole command; returns the manifest."""
  start = time.time()
  path = resolve_path(source)
  sets = load_source(source, image_size)
  output = output or _output_path(path)
  if os.path.abspath(output) == os.path.abspath(path):
    raise UserInputError(f"{output}: is the input; choose another --output")
  entries, keep_by_split, all_findings = [], {}, []
  for split, data in sets.items():
    wrong_size = colour_layout = None
    if os.path.isdir(path):
      wrong_size, colour_layout = _file_layout(path, data.ids)
    findings = find_problems(data.images, data.labels, thresholds, wrong_size, colour_layout)
    keep = np.ones(len(data), bool)
    keep[[f.index for f in findings]] = False
    keep_by_split[split] = keep
    for f in findings:
      entries.append({"split": split, "id": str(data.ids[f.index]), "index": f.index,
                      "label": CLASS_NAMES[int(data.labels[f.index])], "reason": f.reason,
                      "score": round(f.score, 4), "group": f.group, "conflicting_labels": f.conflicting_labels})
    all_findings.append((split, data, findings))
    print(f"{path}{'' if split == 'all' else f' [{split}]'}: {len(data)} images, {len(findings)} to remove")
    print(summary_table(data.labels, findings))
  manifest = {"source": path, "output": None if dry_run else output, "thresholds": vars(thresholds),
              "removed": entries, "counts": dict(collections.Counter(e["reason"] for e in entries)),
              "seconds": round(time.time() - start, 1)}
  if dry_run:
    print("dry run: nothing written")
    return manifest
  if os.path.isdir(path):
    data = sets["all"]
    _write_folder(path, output, data.ids[keep_by_split["all"]])
  else:
    prefixes = {"all": "", "train": "train_", "val": "val_", "test": "test_"}
    _write_npz(path, output, {prefixes[s]: k for s, k in keep_by_split.items()})
  images = np.concatenate([d.images for _, d, _ in all_findings])
  offsets = np.cumsum([0] + [len(d) for _, d, _ in all_findings])
  shifted = [type(f)(f.index + offsets[i], f.reason, f.score, f.group) for i, (_, _, fs) in enumerate(all_findings)
             for f in fs]
  write_bytes_atomic(output.rstrip(os.sep) + ".removed.png", contact_sheet(images, shifted))
  if balance_target:
    split, data, _ = next(x for x in all_findings if x[0] in ("train", "all"))
    kept = np.flatnonzero(keep_by_split[split])
    balanced_images, balanced_labels, _ = oversample(data.images[kept], data.labels[kept], balance_target)
    balanced = os.path.splitext(output.rstrip(os.sep))[0] + "_balanced.npz"
    write_npz_atomic(balanced, images=balanced_images, labels=balanced_labels[:, None].astype(np.int64))
    manifest["balanced_output"] = balanced
    print(f"wrote {balanced}: per class {np.bincount(balanced_labels, minlength=NUM_CLASSES).tolist()}")
  write_json_atomic(output.rstrip(os.sep) + ".manifest.json", manifest)
  print(f"wrote {output} (+ .manifest.json, .removed.png) in {manifest['seconds']} s")
  return manifest


FLAGS = flags.FlagValues()  # this tool's own, not absl's global FLAGS (main.py's); see bloodcell_jax/cli.py
flags.DEFINE_string("data", None, "The data source: an npz file or a folder of class folders.", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Default: <input>_clean.npz or <input>_clean/ beside the input.", flag_values=FLAGS)
flags.DEFINE_bool("dry_run", False, "Only report; write nothing.", flag_values=FLAGS)
flags.DEFINE_integer("image_size", 96, "Image size the source is read at.", flag_values=FLAGS)
flags.DEFINE_integer("balance_target", 0, "Also write <output>_balanced.npz with every class oversampled to this "
                     "count.", flag_values=FLAGS)
for _field, _default in vars(Thresholds()).items():  # one flag per threshold, typed like its default
  {int: flags.DEFINE_integer, float: flags.DEFINE_float}[type(_default)](
      _field, _default, "A hygiene threshold (see Thresholds in bloodcell_jax/data/hygiene.py).",
      flag_values=FLAGS)
del _field, _default
flags.mark_flag_as_required("data", flag_values=FLAGS)


def main(argv=None) -> int:
  def run():
    if FLAGS.balance_target < 0:
      raise UserInputError(f"--balance_target={FLAGS.balance_target} must be positive")
    thresholds = Thresholds(**{k: FLAGS[k].value for k in vars(Thresholds())})
    clean(FLAGS.data, thresholds, FLAGS.dry_run, FLAGS.output, FLAGS.image_size, FLAGS.balance_target)

  return cli.run("python -m bloodcell_jax.tools.clean", __doc__, FLAGS, argv, run)


if __name__ == "__main__":
  sys.exit(main())
