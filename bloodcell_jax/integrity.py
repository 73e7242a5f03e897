"""Digests of what a checkpoint holds, so that a restore can tell intact data from damaged data.

Orbax reads back whatever bytes are on disk: a flipped bit in an array file restores without an
error. Each save therefore records a manifest (the CRC-32 of every array, keyed by its path in the
tree, with its dtype and shape, and of the metadata's JSON) as an item of the same checkpoint, and
each restore recomputes it. CRC-32 detects every burst error of up to 32 bits and any other damage
with probability 1 - 2^-32 per array, which is what disks, networks and truncated copies do; it
runs at several GB/s (zlib releases the GIL, so arrays are checked in parallel), a small part of the
write itself (README: "Preemption, resume and several hosts").
"""

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
from flax import serialization

ALGORITHM = "crc32"


def _leaf_digest(leaf) -> str:
  array = np.ascontiguousarray(np.asarray(leaf))
  return f"{array.dtype.str}{list(array.shape)}:{zlib.crc32(array.reshape(-1).view(np.uint8)):08x}"


def tree_digests(tree) -> dict[str, str]:
  """{path of each leaf: dtype, shape and CRC-32 of its bytes}. Paths are those of the tree as plain
  dicts (flax's state dict), so a tree restored without its original classes has the same ones."""
  flat, _ = jax.tree_util.tree_flatten_with_path(serialization.to_state_dict(tree))
  with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
    digests = list(pool.map(_leaf_digest, [leaf for _, leaf in flat]))
  return {jax.tree_util.keystr(path): digest for (path, _), digest in zip(flat, digests)}


def json_digest(value) -> str:
  return f"{zlib.crc32(json.dumps(value, sort_keys=True).encode()):08x}"


def make_manifest(trees: dict, documents: dict) -> dict:
  """The manifest of array `trees` and JSON `documents`, by item name."""
  return {"algorithm": ALGORITHM, "trees": {name: tree_digests(tree) for name, tree in trees.items()},
          "documents": {name: json_digest(value) for name, value in documents.items()}}


def find_damage(manifest: dict, trees: dict, documents: dict = None) -> str | None:
  """Why the restored `trees`/`documents` differ from `manifest` (the first difference, and how many
  more), or None when every one of them matches. Items of the manifest not passed are not checked."""
  if manifest.get("algorithm") != ALGORITHM:
    return f"manifest of an unknown digest {manifest.get('algorithm')!r}"
  for name, value in (documents or {}).items():
    if json_digest(value) != manifest["documents"].get(name):
      return f"{name} does not match its digest"
  for name, tree in trees.items():
    expected, actual = manifest["trees"].get(name, {}), tree_digests(tree)
    differ = [path for path in expected if actual.get(path) != expected[path]]
    differ += [path for path in actual if path not in expected]
    if differ:
      more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
      what = "missing" if differ[0] not in actual else "does not match its digest"
      return f"{name}{differ[0]} {what}{more}"
  return None
