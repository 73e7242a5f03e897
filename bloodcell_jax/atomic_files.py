"""Files written under a temporary name and renamed into place, so a kill never leaves half a file."""

import json
import os

import numpy as np


def write_text_atomic(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json_atomic(path: str, obj, indent: int | None = 2) -> None:
  write_text_atomic(path, json.dumps(obj, indent=indent))


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
