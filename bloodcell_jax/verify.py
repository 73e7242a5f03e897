"""`--mode=verify`: every checkpoint of a run read back and checked against its manifest, as a table.

Exit status 0 when the newest checkpoint is intact (a resume continues from it), 1 when it is
damaged (a resume would fall back to the newest intact one, named), so scripts can test a run
directory before they trust it, e.g. after copying it between machines.
"""

import glob
import json
import os

from bloodcell_jax import checkpointing, trust
from bloodcell_jax.errors import UserInputError


def _validation_metric(workdir: str) -> dict[int, dict]:
  """{step: validation metrics} of the epochs in metrics.jsonl (epoch-end checkpoints have one)."""
  path = os.path.join(workdir, "metrics.jsonl")
  rows = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          row = json.loads(line)
          rows[int(row["step"])] = row.get("val", {})
        except (ValueError, KeyError, TypeError):
          continue
  return rows


def _position(progress: dict) -> str:
  epoch, offset = int(progress["epoch"]), int(progress["offset"])
  steps = len(progress["permutation"]) // max(int(progress["global_batch"]), 1)
  return f"after epoch {epoch}" if offset == 0 else f"epoch {epoch + 1}, batch {offset} of {steps}"


def run_verify(workdir: str) -> int:
  """Prints the table; returns the exit status (0: the newest checkpoint is intact, 1: it is damaged)."""
  checkpoints = checkpointing.list_checkpoints(workdir)
  if not checkpoints:
    raise UserInputError(f"{workdir}: no checkpoint found (is it the --workdir of a training run?)")
  validation = _validation_metric(workdir)
  print(f"checkpoints of {workdir}, newest first")
  print(f"  {'step':>7}  {'kind':<5} {'position':<24} {'validation':<28} status")
  intact = []
  for checkpoint in checkpoints:
    try:
      restored = checkpointing.verify(checkpoint)
    except checkpointing.Damaged as e:
      print(f"  {checkpoint.step:>7}  {checkpoint.kind:<5} {'-':<24} {'-':<28} DAMAGED: {e}")
      continue
    intact.append(checkpoint)
    monitor = restored["meta"].get("monitor", "")
    value = validation.get(checkpoint.step, {}).get(monitor)
    metric = f"{monitor} {value:.4f}" if isinstance(value, (int, float)) else "-"
    status = "intact" if "manifest" in restored else "intact? (no manifest: written before verification)"
    print(f"  {checkpoint.step:>7}  {checkpoint.kind:<5} {_position(restored['progress']):<24} {metric:<28} {status}")
  steps = sorted(int(n[:-4]) for n in map(os.path.basename, glob.glob(os.path.join(workdir, trust.TRUST_DIR, "*.npz")))
                 if n[:-4].isdigit())
  for step in steps:  # (a record is checked against its checkpoint's weights when eval, predict or export use it)
    try:
      trust.load(workdir, step)
      print(f"  temperature and rejector fitted for step {step}: intact")
    except checkpointing.Damaged as e:
      print(f"  temperature and rejector fitted for step {step}: DAMAGED: {e} (--mode=calibrate refits them)")
  newest = checkpoints[0]
  if intact and intact[0] == newest:
    print(f"newest checkpoint {newest} is intact; training resumes from it")
    return 0
  fallback = f"training would resume from {intact[0]}" if intact else "no checkpoint is intact: --config.restart=True"
  print(f"the newest checkpoint, {newest}, is damaged; {fallback}")
  return 1
