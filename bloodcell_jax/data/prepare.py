"""From a data config to the train and validation sets a run uses."""

import dataclasses

import ml_collections
import numpy as np

from bloodcell_jax.data.sources import ImageSet, load_source, resolve_path
from bloodcell_jax.data.split import stratified_split


@dataclasses.dataclass(frozen=True)
class TrainValData:
  train: ImageSet
  val: ImageSet
  how_split: str  # a sentence for the run directory's split record


def load_train_val(data: ml_collections.ConfigDict) -> TrainValData:
  """MedMNIST files bring their own split; other sources get a stratified, seeded one."""
  sets = load_source(data.source, data.image_size, min_classes=2)
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
