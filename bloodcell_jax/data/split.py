"""Seeded, stratified train/validation splits, recorded so that a run can be reproduced."""

import numpy as np

from bloodcell_jax.atomic_files import write_json_atomic
from bloodcell_jax.data.sources import ImageSet


def check_val_fraction(val_fraction: float) -> float:
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"{val_fraction} must lie in (0, 1)")
  return val_fraction


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices (train, val): each class contributes round(val_fraction * n_c) examples to val.

  A class with at least two examples keeps at least one on each side.
  """
  check_val_fraction(val_fraction)
  rng = np.random.default_rng(seed)
  train, val = [], []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    n_val = int(round(val_fraction * len(members)))
    if len(members) >= 2:
      n_val = min(max(n_val, 1), len(members) - 1)
    val.append(members[:n_val])
    train.append(members[n_val:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def save_split(path: str, source: str, how: str, train: ImageSet, val: ImageSet) -> None:
  """Writes which image went where (ids are file paths or "#index") as JSON, atomically."""
  record = {
      "source": source,
      "how": how,
      "train_ids": train.ids.tolist(),
      "val_ids": val.ids.tolist(),
  }
  write_json_atomic(path, record, indent=None)
