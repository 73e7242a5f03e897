"""Files written under a temporary name and renamed into place, so a kill never leaves half a file."""

import json
import os

import numpy as np


def write_text_atomic(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    f.write(text)
  os.replace(tmp, path)


def finite_or_null(obj):
  """NaN/inf (an AUC with one class present) become null, so files are strict JSON."""
  if isinstance(obj, dict):
    return {k: finite_or_null(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite_or_null(v) for v in obj]
  if isinstance(obj, float) and not np.isfinite(obj):
    return None
  return obj


def write_json_atomic(path: str, obj, indent: int | None = 2) -> None:
  write_text_atomic(path, json.dumps(finite_or_null(obj), indent=indent, allow_nan=False))


def write_bytes_atomic(path: str, data: bytes) -> None:
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_npz_atomic(path: str, **arrays) -> None:
  """A compressed .npz written under a temporary name (ending in .npz, or numpy appends one)."""
  tmp = f"{path[:-4]}.tmp-{os.getpid()}.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)
