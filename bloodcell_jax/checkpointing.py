"""Orbax checkpoints of a run: the last few by step under `checkpoints/`, the best one under `best/`.

The state is saved unreplicated (one copy, not one per device), so a checkpoint restores on any
device count. Saves are asynchronous: training continues while Orbax writes; `close()` waits.
Beside the state, a small JSON item records the epoch, the best metric so far and the model
config, which resume uses to refuse a checkpoint of another model.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

LAST_DIR = "checkpoints"
BEST_DIR = "best"


def _manager(directory: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "meta"))


class RunCheckpoints:
  """The checkpoints of one run directory."""

  def __init__(self, workdir: str, keep: int):
    self.last = _manager(os.path.join(workdir, LAST_DIR), keep)
    self.best = _manager(os.path.join(workdir, BEST_DIR), 1)

  def save(self, step: int, state: Any, meta: dict, is_best: bool) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    self.last.save(step, args=args)
    if is_best:
      self.best.save(step, args=args)

  def latest_step(self) -> int | None:
    return self.last.latest_step()

  def latest_meta(self) -> dict:
    """The JSON item of the newest checkpoint, read without touching the (large) state."""
    step = self.last.latest_step()
    return dict(self.last.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

  def restore_latest(self, target: Any) -> tuple[Any, dict]:
    step = self.last.latest_step()
    restored = self.last.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"])

  def close(self) -> None:
    self.last.wait_until_finished()
    self.best.wait_until_finished()
    self.last.close()
    self.best.close()


def find_checkpoint(workdir: str, which: str = "best") -> tuple[str, int]:
  """(directory, step) of the `best` or `last` checkpoint of a run; `best` falls back to `last`."""
  choices = {"best": (BEST_DIR, LAST_DIR), "last": (LAST_DIR,)}
  if which not in choices:
    raise ValueError(f"checkpoint must be 'best' or 'last', got {which!r}")
  for sub in choices[which]:
    directory = os.path.join(workdir, sub)
    if os.path.isdir(directory):
      manager = _manager(directory, 1, read_only=True)
      step = manager.latest_step()
      manager.close()
      if step is not None:
        return directory, step
  raise FileNotFoundError(f"{workdir}: no checkpoint found (train first, or pass the run's --workdir)")


def restore_params(workdir: str, which: str = "best") -> tuple[Any, dict]:
  """The parameters and meta of a run's checkpoint, as host arrays, without the optimiser state."""
  directory, step = find_checkpoint(workdir, which)
  manager = _manager(directory, 1, read_only=True)
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    handler = ocp.PyTreeCheckpointer()
    state = handler.restore(os.path.join(directory, str(step), "state"))
  finally:
    manager.close()
  return jax.tree.map(lambda x: x, state["params"]), dict(meta)
