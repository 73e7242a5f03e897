"""From a data config to the train and validation sets a run uses."""

import dataclasses
import hashlib
import json
import os

import ml_collections
import numpy as np
from absl import logging

from bloodcell_jax.atomic_files import write_json_atomic
from bloodcell_jax.data.hygiene import Thresholds, find_problems
from bloodcell_jax.data.sources import ImageSet, load_source, resolve_path
from bloodcell_jax.data.split import stratified_split


@dataclasses.dataclass(frozen=True)
class TrainValData:
  train: ImageSet
  val: ImageSet
  how_split: str  # a sentence for the run directory's split record


CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "bloodcell_jax", "clean")


def cleaned(images: ImageSet, thresholds: Thresholds, cache_dir: str = CACHE_DIR) -> ImageSet:
  """`images` without what data hygiene removes; the removal list is cached by content and thresholds."""
  digest = hashlib.sha256(images.images.tobytes())
  digest.update(images.labels.astype(np.int64).tobytes())
  digest.update(json.dumps(vars(thresholds), sort_keys=True).encode())
  cache = os.path.join(cache_dir, f"{digest.hexdigest()[:32]}.json")
  if os.path.exists(cache):
    with open(cache) as f:
      removed = json.load(f)["removed"]
    logging.info("data.clean: %d images removed (list read from %s)", len(removed), cache)
  else:
    removed = [f.index for f in find_problems(images.images, images.labels, thresholds)]
    os.makedirs(cache_dir, exist_ok=True)
    write_json_atomic(cache, {"removed": removed, "thresholds": vars(thresholds)})
    logging.info("data.clean: %d images removed (list saved to %s)", len(removed), cache)
  keep = np.ones(len(images), bool)
  keep[removed] = False
  return images.subset(np.flatnonzero(keep))


def load_train_val(data: ml_collections.ConfigDict) -> TrainValData:
  """MedMNIST files bring their own split; other sources get a stratified, seeded one.

  With `data.clean`, outliers and duplicates are removed before splitting (from a MedMNIST file's
  train split only: its validation split is left as it is).
  """
  sets = load_source(data.source, data.image_size, min_classes=2)
  if data.clean:
    for name in ("train", "all"):
      if name in sets:
        sets[name] = cleaned(sets[name], Thresholds(), data.clean_cache or CACHE_DIR)
  if "train" in sets and "val" in sets:
    return TrainValData(sets["train"], sets["val"], "the source's own train/val split")
  pool = sets.get("train", sets.get("all"))
  if pool is None:
    raise ValueError(f"{resolve_path(data.source)}: no training images")
  train_idx, val_idx = stratified_split(pool.labels, data.val_fraction, data.split_seed)
  how = f"stratified split, val_fraction={data.val_fraction}, split_seed={data.split_seed}"
  return TrainValData(pool.subset(train_idx), pool.subset(val_idx), how)


def load_eval_set(source: str, image_size: int, split: str = "test") -> ImageSet:
  """The images to evaluate or predict on: a MedMNIST file's `split`, or everything in other sources."""
  sets = load_source(source, image_size, allow_unlabelled=True)
  if "all" in sets:
    return sets["all"]
  if split in sets:
    return sets[split]
  return ImageSet(*(np.concatenate(parts) for parts in zip(
      *((s.images, s.labels, s.ids) for s in sets.values()))))
