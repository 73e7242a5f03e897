"""Orbax checkpoints of a run, verified: the last few by step under `checkpoints/`, the best one under `best/`.

Each checkpoint holds four items: `state` (parameters, optimiser state, step, RNG key, saved
unreplicated so it restores on any device count), `progress` (the epoch, the position in its
permutation and the epoch's partial metrics, see progress.py), `meta` (JSON: best metric so far,
early-stopping count, the architecture) and `manifest` (the digest of every array and of `meta`,
integrity.py). Orbax writes all four into a temporary directory and renames it when complete, so a
kill during a save leaves the previous checkpoints as they were and no checkpoint is ever visible
without its manifest. Every restore recomputes the digests: a checkpoint whose files, metadata or
digests do not match is damaged, is never trained or evaluated on, and is never deleted.
"""

import dataclasses
import datetime
import errno
import glob
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from bloodcell_jax import integrity
from bloodcell_jax.errors import CheckpointWriteError, DiskFull, UserInputError

LAST_DIR = "checkpoints"
BEST_DIR = "best"
ITEMS = ("state", "progress", "meta", "manifest")
TMP_PATTERN = "*.orbax-checkpoint-tmp*"  # what Orbax writes before its rename


class Damaged(Exception):
  """A checkpoint whose files, metadata or digests do not match; the message says which."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """One checkpoint of a run: `kind` is "last" (under checkpoints/) or "best"."""

  kind: str
  step: int
  directory: str  # the manager's directory (checkpoints/ or best/)

  @property
  def path(self) -> str:
    return os.path.join(self.directory, str(self.step))

  def __str__(self) -> str:
    return f"step {self.step} ({self.kind})"

  @property
  def name(self) -> str:
    """As a log line names it: "checkpoint 48", "best checkpoint 48"."""
    return f"{'best ' if self.kind == 'best' else ''}checkpoint {self.step}"


def _manager(directory: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=ITEMS)


def tree_bytes(tree: Any) -> int:
  return sum(np.asarray(x).nbytes if not hasattr(x, "nbytes") else int(x.nbytes) for x in jax.tree.leaves(tree))


def _committed_steps(directory: str) -> list[int]:
  """Steps Orbax finished writing in a manager directory (its temporary directories are not steps)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def list_checkpoints(workdir: str) -> list[Checkpoint]:
  """Every checkpoint of a run, newest first; at the same step the `last` copy comes before the best."""
  found = [Checkpoint(kind, step, os.path.join(workdir, sub)) for kind, sub in (("last", LAST_DIR), ("best", BEST_DIR))
           for step in _committed_steps(os.path.join(workdir, sub))]
  return sorted(found, key=lambda c: (-c.step, c.kind != "last"))


def remove_partial_saves(workdir: str) -> list[str]:
  """Deletes what an interrupted save left (Orbax's temporary directories); only the run's owner may
  call this, as another process's save in flight looks the same. Returns what was removed."""
  removed = []
  for sub in (LAST_DIR, BEST_DIR):
    for path in glob.glob(os.path.join(workdir, sub, TMP_PATTERN)):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed


def preflight(workdir: str, checkpoint_bytes: int, keep: int) -> None:
  """Fails early, with one line, when the run directory cannot hold the checkpoints the run will add:
  `keep` last ones, the best and one being written, less those already there."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "wb") as f:
      f.write(b"0" * 4096)
    os.remove(probe)
  except OSError as e:
    raise UserInputError(f"{workdir}: run directory is not writable ({e.strerror or e})") from None
  present = len(list_checkpoints(workdir))
  adding = max(1, keep + 2 - present)
  needed = adding * checkpoint_bytes
  free = shutil.disk_usage(workdir).free
  if free < needed:
    raise UserInputError(f"{workdir}: only {free / 2**20:.0f} MiB free on its disk; checkpoints need about "
                         f"{needed / 2**20:.0f} MiB more ({adding} x {checkpoint_bytes / 2**20:.1f} MiB)")


def _first_line(error: Exception) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _is_disk_full(error: BaseException) -> bool:
  while error is not None:
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


class RunCheckpoints:
  """The checkpoints of one run directory, as the training process that owns it sees them."""

  def __init__(self, workdir: str, keep: int):
    self.workdir = workdir
    self._closed = False
    self.last = _manager(os.path.join(workdir, LAST_DIR), keep)
    self.best = _manager(os.path.join(workdir, BEST_DIR), 1)
    self._bytes, self._step = 0, 0  # of the save in flight

  def save(self, step: int, state: Any, progress: dict, meta: dict, is_best: bool) -> None:
    """Starts writing a checkpoint (host arrays); the write goes on in the background."""
    try:  # the previous save's failure, if any, belongs to its step (Orbax waits for it here anyway)
      self.last.wait_until_finished()
      self.best.wait_until_finished()
    except Exception as e:
      raise self._write_error(self._step, e) from None
    self._bytes, self._step = tree_bytes(state) + tree_bytes(progress), step
    # A save that runs out of space fails in Orbax's writer threads, which print their own tracebacks;
    # one that cannot fit is refused here, before a byte is written.
    if shutil.disk_usage(self.workdir).free < (2 if is_best else 1) * (1.1 * self._bytes + 2**20):
      raise self._write_error(step, OSError(errno.ENOSPC, "No space left on device"))
    meta = dict(meta, integrity=integrity.ALGORITHM)  # so a checkpoint that lost its manifest is told apart
    manifest = integrity.make_manifest({"state": state, "progress": progress}, {"meta": meta})
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.StandardSave(progress),
                              meta=ocp.args.JsonSave(meta), manifest=ocp.args.JsonSave(manifest))
    try:
      self.last.save(step, args=args)
      if is_best:
        if jax.process_count() > 1:
          # Both managers would name their cross-process barrier after the same step.
          self.last.wait_until_finished()
        self.best.save(step, args=args)
    except Exception as e:  # Orbax surfaces I/O errors of earlier asynchronous saves here too
      raise self._write_error(step, e) from None

  def _write_error(self, step: int, error: Exception) -> Exception:
    written = [c for c in list_checkpoints(self.workdir) if c.step != step]
    resume = f"the newest checkpoint to resume from is {written[0]}" if written else "no checkpoint was written yet"
    if _is_disk_full(error):
      free = shutil.disk_usage(self.workdir).free
      return DiskFull(f"{self.workdir}: disk full while writing the checkpoint of step {step} (about "
                      f"{self._bytes / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free); {resume}; free space "
                      "and run the same command to resume")
    return CheckpointWriteError(f"{self.workdir}: could not write the checkpoint of step {step} "
                                f"({_first_line(error)}); {resume}")

  def restore(self, state_target: Any, check_meta) -> tuple[Any, dict, dict] | None:
    """(state, progress tree, meta) of the newest intact checkpoint, `last` or `best`, or None when
    there is none. `check_meta(meta)` may raise to refuse a checkpoint (another model); a damaged one is
    skipped with a warning that names it and why."""
    for checkpoint in list_checkpoints(self.workdir):
      manager = self.last if checkpoint.kind == "last" else self.best
      try:  # the small meta first: another model is refused before its arrays are read
        check_meta(dict(_restore_items(manager, checkpoint, meta=ocp.args.JsonRestore())["meta"]))
        restored = _restore_verified(manager, checkpoint, state=ocp.args.StandardRestore(state_target),
                                     progress=ocp.args.StandardRestore())
      except Damaged as e:
        logging.warning("%s in %s is damaged (%s); skipped", checkpoint.name, self.workdir, e)
        continue
      if checkpoint.kind == "best":
        logging.warning("resuming from the best checkpoint, %s: the newer ones are damaged", checkpoint)
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
      raise self._write_error(self._step, e) from None
    finally:
      self.last.close()
      self.best.close()


def _restore_items(manager: ocp.CheckpointManager, checkpoint: Checkpoint, **items) -> dict:
  """Orbax's restore of `items`; any failure to read them (missing or truncated files, metadata that
  does not parse) is Damaged."""
  try:
    return manager.restore(checkpoint.step, args=ocp.args.Composite(**items))
  except Exception as e:
    raise Damaged(_first_line(e)) from None


def _restore_verified(manager: ocp.CheckpointManager, checkpoint: Checkpoint, **trees) -> dict:
  """The array items `trees` (with meta) of a checkpoint, checked against its manifest. A checkpoint
  written before manifests existed loads with a warning."""
  has_manifest = os.path.isdir(os.path.join(checkpoint.path, "manifest"))
  items = dict(trees, meta=ocp.args.JsonRestore())
  if has_manifest:
    items["manifest"] = ocp.args.JsonRestore()
  restored = _restore_items(manager, checkpoint, **items)
  if not has_manifest and "integrity" in restored["meta"]:
    raise Damaged("its manifest is missing")
  if not has_manifest:
    logging.warning("checkpoint %s has no manifest (written before checkpoints were verified): loaded "
                    "unverified", checkpoint.path)
    return restored
  damage = integrity.find_damage(dict(restored["manifest"]), {name: restored[name] for name in trees},
                                 {"meta": dict(restored["meta"])})
  if damage:
    raise Damaged(damage)
  return restored


def _as_numpy(manager: ocp.CheckpointManager, checkpoint: Checkpoint, item: str) -> ocp.args.PyTreeRestore:
  """Restore arguments that give host NumPy arrays, whatever devices (or GPU) wrote the checkpoint."""
  try:
    tree = ocp.PyTreeCheckpointer().metadata(os.path.abspath(os.path.join(checkpoint.path, item))).item_metadata.tree
  except Exception as e:
    raise Damaged(_first_line(e)) from None
  return ocp.args.PyTreeRestore(restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))


def verify(checkpoint: Checkpoint) -> dict:
  """Every item of `checkpoint` read and checked against its manifest: {"state", "progress", "meta"}.
  Raises Damaged."""
  manager = _manager(checkpoint.directory, 1, read_only=True)
  try:
    return _restore_verified(manager, checkpoint, state=_as_numpy(manager, checkpoint, "state"),
                             progress=_as_numpy(manager, checkpoint, "progress"))
  finally:
    manager.close()


def _select(workdir: str, which: str | int) -> tuple[list[Checkpoint], list[Checkpoint]]:
  """The checkpoints `which` names, in the order to try them ("best", falling back to the newest when
  the run has no best; "last"; or a step, whose `last` and `best` copies are the same), and all of the
  run's."""
  every = list_checkpoints(workdir)
  if not every:
    raise UserInputError(f"{workdir}: no checkpoint found (train first, or pass the run's --workdir)")
  if str(which).isdigit():
    chosen = [c for c in every if c.step == int(which)]
    if not chosen:
      raise UserInputError(f"{workdir}: no checkpoint of step {which}; it has steps "
                           f"{', '.join(str(s) for s in sorted({c.step for c in every}))}")
    return chosen, every
  if which not in ("best", "last"):
    raise UserInputError(f"--checkpoint={which!r}: choose best, last or a step number")
  chosen = [c for c in every if c.kind == which] or ([c for c in every if c.kind == "last"] if which == "best" else [])
  if not chosen:
    raise UserInputError(f"{workdir}: no '{which}' checkpoint found (train first, or pass the run's --workdir)")
  return chosen[:1], every


def restore_variables(workdir: str, which: str | int = "best", weights: str | None = None) -> tuple[dict, int]:
  """What `model.apply` needs ({"params": ..., plus BatchNorm's "batch_stats" where the model has
  them}) as host arrays, verified, and the step. `weights`: "raw", "ema" (the moving average), or
  None for the ones the run serves (recorded in the checkpoint). A damaged checkpoint is a
  UserInputError that names it and the intact ones."""
  chosen, every = _select(workdir, which)
  for checkpoint in chosen:
    manager = _manager(checkpoint.directory, 1, read_only=True)
    try:
      restored = _restore_verified(manager, checkpoint, state=_as_numpy(manager, checkpoint, "state"))
      state, served = restored["state"], weights or restored["meta"].get("weights", "raw")
      if served == "ema":
        if not state.get("ema"):
          raise UserInputError(f"{checkpoint}: holds no weight average (the run had ema.decay=0)")
        return dict(state["ema"]), checkpoint.step
      return {"params": state["params"], **state.get("model_state", {})}, checkpoint.step
    except Damaged as e:
      damage = e
    finally:
      manager.close()
  intact = []
  for other in every:
    if other not in chosen:
      try:
        verify(other)
        intact.append(str(other))
      except Damaged:
        pass
  raise UserInputError(f"{workdir}: the '{which}' checkpoint, {chosen[0]}, is damaged ({damage}); intact: "
                       f"{', '.join(intact) or 'none'} (--checkpoint=STEP picks one)")


def set_aside(workdir: str) -> str | None:
  """Moves a run's checkpoints, metrics and report into `replaced-<time>/` (for restart=True); never deletes."""
  names = [n for n in (LAST_DIR, BEST_DIR, "metrics.jsonl", "tensorboard", "run.json", "report", "trust")
           if os.path.exists(os.path.join(workdir, n))]
  if not names:
    return None
  target = os.path.join(workdir, "replaced-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
  os.makedirs(target)
  for name in names:
    os.rename(os.path.join(workdir, name), os.path.join(target, name))
  return target
