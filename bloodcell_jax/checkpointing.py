"""Orbax checkpoints of a run: the last few by step under `checkpoints/`, the best one under `best/`.

Each checkpoint holds three items: `state` (parameters, optimiser state, step, RNG key, saved
unreplicated so it restores on any device count), `progress` (the epoch, the position in its
permutation and the epoch's partial metrics, see progress.py) and `meta` (JSON: best metric so far,
early-stopping count, the architecture). Saves are asynchronous; Orbax writes into a temporary
directory and renames it when complete, so a kill during a save leaves the previous checkpoints as
they were. Restoring walks back from the newest checkpoint past damaged ones, with a warning.
"""

import datetime
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from bloodcell_jax.errors import CheckpointWriteError, UserInputError

LAST_DIR = "checkpoints"
BEST_DIR = "best"
ITEMS = ("state", "progress", "meta")


def _manager(directory: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=ITEMS)


def tree_bytes(tree: Any) -> int:
  return sum(np.asarray(x).nbytes if not hasattr(x, "nbytes") else int(x.nbytes) for x in jax.tree.leaves(tree))


def preflight(workdir: str, checkpoint_bytes: int, keep: int) -> None:
  """Fails early, with one line, when the run directory cannot hold the checkpoints."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "wb") as f:
      f.write(b"0" * 4096)
    os.remove(probe)
  except OSError as e:
    raise UserInputError(f"{workdir}: run directory is not writable ({e.strerror or e})") from None
  needed = (keep + 2) * checkpoint_bytes  # `keep` last ones, the best, one being written
  free = shutil.disk_usage(workdir).free
  if free < needed:
    raise UserInputError(f"{workdir}: only {free / 2**20:.0f} MiB free on its disk; checkpoints need about "
                         f"{needed / 2**20:.0f} MiB ({keep + 2} x {checkpoint_bytes / 2**20:.1f} MiB)")


class RunCheckpoints:
  """The checkpoints of one run directory."""

  def __init__(self, workdir: str, keep: int):
    self.workdir = workdir
    self._closed = False
    self.last = _manager(os.path.join(workdir, LAST_DIR), keep)
    self.best = _manager(os.path.join(workdir, BEST_DIR), 1)

  def steps(self) -> list[int]:
    return sorted(self.last.all_steps())

  def save(self, step: int, state: Any, progress: dict, meta: dict, is_best: bool) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.StandardSave(progress),
                              meta=ocp.args.JsonSave(meta))
    try:
      self.last.save(step, args=args)
      if is_best:
        if jax.process_count() > 1:
          # Both managers would name their cross-process barrier after the same step.
          self.last.wait_until_finished()
        self.best.save(step, args=args)
    except Exception as e:  # Orbax surfaces I/O errors of earlier async saves here too
      raise CheckpointWriteError(f"{self.workdir}: could not write the checkpoint of step {step} ({e}); "
                                 "earlier checkpoints are intact") from None

  def read_meta(self, step: int) -> dict:
    return dict(self.last.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

  def restore(self, state_target: Any, check_meta) -> tuple[Any, dict, dict] | None:
    """(state, progress tree, meta) of the newest intact checkpoint, or None when there is none.

    `check_meta(meta)` may raise to refuse a checkpoint (another model); damaged checkpoints are
    skipped with a warning and never deleted.
    """
    for step in reversed(self.steps()):
      try:
        meta = self.read_meta(step)
      except Exception as e:
        logging.warning("checkpoint %d in %s is damaged (%s); trying the previous one", step, self.workdir, e)
        continue
      check_meta(meta)
      try:
        restored = self.last.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state_target), progress=ocp.args.StandardRestore(),
            meta=ocp.args.JsonRestore()))
      except Exception as e:
        logging.warning("checkpoint %d in %s is damaged (%s); trying the previous one", step, self.workdir,
                        str(e).splitlines()[0][:300])
        continue
      return restored["state"], dict(restored["progress"]), dict(restored["meta"])
    return None

  def close(self) -> None:
    """Waits for the asynchronous saves to finish; safe to call more than once."""
    if self._closed:
      return
    self._closed = True
    try:
      self.last.wait_until_finished()
      self.best.wait_until_finished()
    except Exception as e:
      raise CheckpointWriteError(f"{self.workdir}: the last checkpoint could not be written ({e}); "
                                 "earlier checkpoints are intact") from None
    finally:
      self.last.close()
      self.best.close()


def set_aside(workdir: str) -> str | None:
  """Moves a run's checkpoints, metrics and report into `replaced-<time>/` (for restart=True); never deletes."""
  names = [n for n in (LAST_DIR, BEST_DIR, "metrics.jsonl", "tensorboard", "run.json", "report") if os.path.exists(os.path.join(workdir, n))]
  if not names:
    return None
  target = os.path.join(workdir, "replaced-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
  os.makedirs(target)
  for name in names:
    os.rename(os.path.join(workdir, name), os.path.join(target, name))
  return target


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


def restore_variables(workdir: str, which: str = "best") -> tuple[dict, int]:
  """What `model.apply` needs ({"params": ..., plus BatchNorm's "batch_stats" where the model has
  them}) as host arrays, and the step."""
  directory, step = find_checkpoint(workdir, which)
  path = os.path.abspath(os.path.join(directory, str(step), "state"))  # Orbax reads metadata by absolute path
  checkpointer = ocp.PyTreeCheckpointer()
  # NumPy leaves: independent of the devices (or GPU) the checkpoint was written from.
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                          checkpointer.metadata(path).item_metadata.tree)
  state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  return {"params": state["params"], **state.get("model_state", {})}, step
