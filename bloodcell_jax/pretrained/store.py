"""Ported weights on disk: checkpoints/pretrained/<name>/ holds an Orbax checkpoint of the parameters
(params/), of BatchNorm statistics where the model has them (batch_stats/), and pretrained.json
(source, sha256, architecture, input normalisation, key report, and the digest of every array).

Written under a temporary name and renamed, so an interrupted port leaves nothing that loads; loading
checks the digests, so damaged weights are refused rather than fine-tuned from.
"""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from bloodcell_jax import integrity
from bloodcell_jax.atomic_files import write_json_atomic
from bloodcell_jax.errors import UserInputError

META_FILE = "pretrained.json"
DEFAULT_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "checkpoints", "pretrained")


def save(directory: str, params: dict, meta: dict, overwrite: bool = False, model_state: dict | None = None) -> str:
  """Writes the weights (and BatchNorm statistics, `model_state`, where the model has them)."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not overwrite:
    raise UserInputError(f"{directory}: already exists; pass --overwrite to replace it")
  tmp = f"{directory}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, "params"), params)
      for collection, tree in (model_state or {}).items():
        checkpointer.save(os.path.join(tmp, collection), tree)
    variables = {"params": params, **(model_state or {})}
    meta = dict(meta, manifest=integrity.make_manifest({"variables": jax.tree.map(np.asarray, variables)}, {}))
    write_json_atomic(os.path.join(tmp, META_FILE), meta)
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.replace(tmp, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return directory


def resolve(name_or_path: str) -> str:
  """A directory as given, or checkpoints/pretrained/<name>."""
  for candidate in (name_or_path, os.path.join(DEFAULT_ROOT, name_or_path)):
    if os.path.isfile(os.path.join(candidate, META_FILE)):
      return os.path.abspath(candidate)
  raise UserInputError(f"{name_or_path}: no ported weights there (nor in {DEFAULT_ROOT}); create them with "
                       f"`python -m bloodcell_jax.pretrained <timm name or file>`")


def read_meta(directory: str) -> dict:
  with open(os.path.join(directory, META_FILE)) as f:
    return json.load(f)


MODEL_STATE_COLLECTIONS = ("batch_stats",)


def load_variables(name_or_path: str) -> tuple[dict, dict]:
  """({"params": ..., and "batch_stats" where saved} as numpy arrays, metadata) of ported weights."""
  directory = resolve(name_or_path)
  meta = read_meta(directory)
  variables = {}
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      for collection in ("params",) + MODEL_STATE_COLLECTIONS:
        if collection == "params" or os.path.isdir(os.path.join(directory, collection)):
          variables[collection] = checkpointer.restore(os.path.join(directory, collection))
  except Exception as e:
    raise UserInputError(f"{directory}: the weights do not load ({type(e).__name__}: {e})") from None
  variables = jax.tree.map(np.asarray, variables)
  damage = integrity.find_damage(meta["manifest"], {"variables": variables}) if "manifest" in meta else None
  if damage:
    raise UserInputError(f"{directory}: the ported weights are damaged ({damage}); port them again")
  return variables, meta


def load(name_or_path: str) -> tuple[dict, dict]:
  """(parameters as numpy arrays, metadata) of ported weights."""
  variables, meta = load_variables(name_or_path)
  return variables["params"], meta
