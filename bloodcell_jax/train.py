"""Training and evaluation loop: data, model, optimiser, pmapped steps, metrics, checkpoints.

The run directory (workdir) receives `config.json` (the resolved config), `config_changes.jsonl`
(what changed at each resume), `split.json` (which image went to train and validation),
`metrics.jsonl` (one row per epoch), the same curves as TensorBoard events under `tensorboard/`,
`run.json` (parameter count and the machine of each session) and the Orbax checkpoints. Re-running with the same workdir
resumes from the newest intact checkpoint, mid-epoch included, and ends bit-identical to a run that
was never interrupted. SIGTERM or Ctrl-C stop after the current step with a checkpoint.
"""

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import jax_utils
from tqdm import tqdm

from bloodcell_jax import checkpointing, cpu_info, distributed, optim, pretrained
from bloodcell_jax.atomic_files import finite_or_null, write_json_atomic, write_text_atomic
from bloodcell_jax.classes import CLASS_NAMES, NUM_CLASSES
from bloodcell_jax.config import (CONFIG_FILE, architecture_signature, check_batch_size, keeps_weight_average,
                                  served_weights, step_config)
from bloodcell_jax.data import pipeline
from bloodcell_jax.data.prepare import load_train_val
from bloodcell_jax.data.split import save_split
from bloodcell_jax.data.sources import resolve_path
from bloodcell_jax.distributed import unreplicate
from bloodcell_jax.errors import CheckpointWriteError, TrainingDiverged, UserInputError
from bloodcell_jax.evaluation import evaluate
from bloodcell_jax.losses import class_weights as compute_class_weights
from bloodcell_jax.models import create_model
from bloodcell_jax.preemption import StopRequest
from bloodcell_jax.progress import EpochProgress
from bloodcell_jax.run_lock import RunLock
from bloodcell_jax.steps import create_train_state, init_variables, pmapped_steps, split_variables, variables_of
from bloodcell_jax.tensorboard_writer import EventWriter

TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_SCALARS = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc")


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def record_config(workdir: str, config: ml_collections.ConfigDict, resuming: bool) -> None:
  """Writes config.json; on resume, logs and appends what changed to config_changes.jsonl."""
  path = os.path.join(workdir, CONFIG_FILE)
  new = json.loads(config.to_json_best_effort())
  if resuming and os.path.exists(path):
    with open(path) as f:
      old = _flatten(json.load(f))
    flat = _flatten(new)
    changes = {k: [old.get(k), flat.get(k)] for k in sorted(set(old) | set(flat)) if old.get(k) != flat.get(k)}
    if changes:
      logging.info("resuming with config changes: %s", changes)
      with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": changes}) + "\n")
  write_json_atomic(path, new)


def _summary(metrics: dict) -> str:
  keys = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
  return " ".join(f"{k.replace('balanced_accuracy', 'bal_acc')} {metrics[k]:.4f}" for k in keys if k in metrics)


def _keep_metric_rows_before(path: str, epoch: int) -> None:
  """Drops rows of epochs at or after `epoch` (written after the checkpoint being resumed from)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and json.loads(line)["epoch"] < epoch]
  write_text_atomic(path, "".join(rows))


class _Run:
  """Everything one training run holds; `train_and_evaluate` builds it and calls `fit`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self.num_devices = jax.local_device_count()
    self.global_batch = config.train.batch_size
    check_batch_size(self.global_batch, jax.device_count())
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")

    self.data = load_train_val(config.data)
    if len(self.data.train) < self.global_batch:
      raise UserInputError(f"{resolve_path(config.data.source)}: {len(self.data.train)} training images, fewer "
                           f"than one batch (train.batch_size={self.global_batch})")
    try:
      self.class_weights = compute_class_weights(self.data.train.labels, NUM_CLASSES, config.loss.class_weights)
    except ValueError as e:
      raise UserInputError(f"config: loss.class_weights: {e}") from None

    self.model = create_model(config.model, NUM_CLASSES)
    self.steps_per_epoch = pipeline.steps_per_epoch(len(self.data.train), self.global_batch)
    self.schedule = optim.learning_rate_schedule(config.optim, self.steps_per_epoch, config.train.num_epochs)
    params, model_state = split_variables(init_variables(self.model, config.data.image_size, config.seed))
    if config.model.init_from:
      params, model_state = pretrained.merge_into(params, model_state, config)
    self.tx = optim.create_optimizer(config.optim, params, self.schedule)
    self.state = create_train_state(params, self.tx, config.seed, model_state,
                                    with_ema=keeps_weight_average(config))
    self.progress = self._new_epoch(0)
    self.best, self.bad_epochs = -np.inf, 0

  def _new_epoch(self, epoch: int) -> EpochProgress:
    return EpochProgress.start(epoch, self.config.seed, len(self.data.train), self.global_batch, NUM_CLASSES)

  def _meta(self) -> dict:
    return {"best": float(self.best), "bad_epochs": self.bad_epochs, "monitor": self.config.train.monitor_metric,
            "model": architecture_signature(self.config), "class_names": list(CLASS_NAMES),
            "ema": keeps_weight_average(self.config), "weights": served_weights(self.config)}

  def open_checkpoints(self) -> checkpointing.RunCheckpoints:
    """Checks the workdir, then restores the newest intact checkpoint if there is one."""
    config, workdir = self.config, self.workdir
    if distributed.is_primary():  # the owner of the run (it holds the lock): nothing else is saving here
      for path in checkpointing.remove_partial_saves(workdir):
        logging.warning("removed %s, left by a save that did not finish", path)
    checkpoint_bytes = checkpointing.tree_bytes(self.state) + checkpointing.tree_bytes(self.progress.to_tree())
    checkpointing.preflight(workdir, checkpoint_bytes, config.checkpoint.keep)
    if config.restart and distributed.is_primary():
      moved = checkpointing.set_aside(workdir)
      if moved:
        logging.warning("restart=True: earlier checkpoints and metrics moved to %s", moved)
    checkpoints = checkpointing.RunCheckpoints(workdir, config.checkpoint.keep)
    signature = architecture_signature(config)

    def check_meta(meta):
      if meta["model"] != signature:
        changed = sorted(k for k in set(meta["model"]) | set(signature) if meta["model"].get(k) != signature.get(k))
        raise UserInputError(f"{workdir}: holds checkpoints of another model ({', '.join(changed)} differ); "
                             "use another --workdir")
      if meta.get("ema", False) != keeps_weight_average(config):
        had = "with" if meta.get("ema", False) else "without"
        raise UserInputError(f"{workdir}: holds checkpoints trained {had} a weight average, and the config sets "
                             f"ema.decay={config.ema.decay}; keep it as it was or use another --workdir")

    target = jax.device_get(self.state)
    present = checkpointing.list_checkpoints(workdir)
    restored = checkpoints.restore(target, check_meta) if present else None
    if present and restored is None:
      raise UserInputError(f"{workdir}: no intact checkpoint among {', '.join(map(str, present))}; pass "
                           "--config.restart=True to start over (they are moved aside, not deleted)")
    if distributed.is_primary():
      record_config(workdir, config, resuming=restored is not None)
      save_split(os.path.join(workdir, "split.json"), resolve_path(config.data.source), self.data.how_split,
                 self.data.train, self.data.val)
    if restored is None:
      if distributed.is_primary():  # curves of an earlier attempt that never reached a checkpoint
        if os.path.exists(self.metrics_path):
          os.remove(self.metrics_path)
        shutil.rmtree(os.path.join(workdir, TENSORBOARD_DIR), ignore_errors=True)
      return checkpoints
    self.state, progress_tree, meta = restored
    self.progress = EpochProgress.from_tree(progress_tree)
    if len(self.progress.permutation) != len(self.data.train) or self.progress.global_batch != self.global_batch:
      raise UserInputError(f"{workdir}: the checkpoint was written for {len(self.progress.permutation)} training "
                           f"images and batch {self.progress.global_batch}, the config now gives "
                           f"{len(self.data.train)} and {self.global_batch}; use another --workdir")
    self.best, self.bad_epochs = meta["best"], meta["bad_epochs"]
    if distributed.is_primary():
      _keep_metric_rows_before(self.metrics_path, self.progress.epoch)
    logging.info("resumed from %s: epoch %d, batch %d of %d (step %d)", workdir, self.progress.epoch + 1,
                 self.progress.offset, self.steps_per_epoch, int(self.state.step))
    return checkpoints

  def _absorb(self, pending: list) -> None:
    """Copies the pending steps' outputs to the host; stops on a NaN/inf step unless told to skip."""
    fetched = [(m, distributed.gather_examples(p), distributed.gather_examples(l))
               for m, p, l in jax.device_get(pending)]
    bad = self.progress.absorb(fetched)
    pending.clear()
    if bad and not self.config.train.skip_nonfinite_steps:
      step = self.progress.epoch * self.steps_per_epoch + bad[0] + 1
      raise TrainingDiverged(
          f"loss or gradient became NaN/inf at step {step} (epoch {self.progress.epoch + 1}); the last good "
          f"checkpoint is kept in {self.workdir}; lower optim.learning_rate, or set "
          "--config.train.skip_nonfinite_steps=True to skip such steps")
    if bad:
      logging.warning("skipped %d step(s) with a NaN/inf loss or gradient in epoch %d", len(bad),
                      self.progress.epoch + 1)

  def _save(self, checkpoints, replicated, is_best: bool = False) -> int:
    step = int(jax.device_get(replicated.step[0]))
    # Host copies: the same on every process, so Orbax writes them once, from any device count.
    checkpoints.save(step, jax.device_get(unreplicate(replicated)), self.progress.to_tree(), self._meta(), is_best)
    return step

  def fit(self, checkpoints: checkpointing.RunCheckpoints) -> dict:
    config, num_epochs = self.config, self.config.train.num_epochs
    every = config.checkpoint.every_steps
    p_train, p_eval = pmapped_steps(self.model, self.tx, step_config(config))
    replicated = jax_utils.replicate(self.state)
    self.state = None  # the replicated copy is the live one (donated each step on accelerators)
    class_weights = jax_utils.replicate(jnp.asarray(self.class_weights))
    row = {"epoch": self.progress.epoch - 1}  # what a run that has already finished reports
    if self.progress.epoch >= num_epochs:
      logging.info("%s: the run has finished its %d epochs; nothing to train", self.workdir, num_epochs)
    events = EventWriter(os.path.join(self.workdir, TENSORBOARD_DIR)) if distributed.is_primary() else None
    with StopRequest() as stop, events or contextlib.nullcontext():
      while self.progress.epoch < num_epochs:
        epoch, start = self.progress.epoch, time.time()
        batches = pipeline.to_devices(pipeline.train_batches(
            self.data.train, self.global_batch, self.num_devices, config.seed, epoch, self.progress.offset,
            jax.process_index(), jax.process_count()), config.train.prefetch)
        pending = []
        for batch in tqdm(batches, total=self.steps_per_epoch, initial=self.progress.offset,
                          desc=f"epoch {epoch + 1}/{num_epochs}", leave=False, disable=None):
          replicated, metrics, probs = p_train(replicated, batch, class_weights)
          pending.append((metrics, probs, batch["label"]))
          done = self.progress.offset + len(pending)
          periodic = every and (epoch * self.steps_per_epoch + done) % every == 0 and done < self.steps_per_epoch
          stopping = self._agreed_stop(stop, done)
          if periodic or stopping:
            self._absorb(pending)
            step = self._save(checkpoints, replicated)
            if stopping:
              checkpoints.close()
              print(f"stopped by {stop.requested or 'another process'} at step {step} (epoch {epoch + 1}, batch {done} of "
                    f"{self.steps_per_epoch}); checkpoint in {os.path.join(self.workdir, checkpointing.LAST_DIR)}; "
                    "run the same command to resume", flush=True)
              return row
        self._absorb(pending)
        train_metrics = self.progress.metrics()
        val_metrics, _ = evaluate(p_eval, variables_of(replicated), self.data.val, class_weights, self.global_batch,
                                  self.num_devices)
        step = int(jax.device_get(replicated.step[0]))
        row = {"epoch": epoch, "step": step, "learning_rate": float(self.schedule(step)),
               "time_s": round(time.time() - start, 2), "train": train_metrics, "val": val_metrics}
        if replicated.ema:
          row["val_ema"], _ = evaluate(p_eval, replicated.ema, self.data.val, class_weights, self.global_batch,
                                       self.num_devices, desc="eval ema")
        served = row["val_ema" if served_weights(config) == "ema" else "val"]
        if distributed.is_primary():
          with open(self.metrics_path, "a") as f:
            f.write(json.dumps(finite_or_null(row), allow_nan=False) + "\n")
          events.write_scalars(epoch + 1, tensorboard_scalars(row))
        logging.info("epoch %d/%d  train %s | val %s%s  (%.1fs)", epoch + 1, num_epochs, _summary(train_metrics),
                     _summary(val_metrics), f" | val ema {_summary(row['val_ema'])}" if "val_ema" in row else "",
                     row["time_s"])

        monitor = config.train.monitor_metric
        value = -served["loss"] if monitor == "loss" else served[monitor]
        is_best = value > self.best
        self.best, self.bad_epochs = (value, 0) if is_best else (self.best, self.bad_epochs + 1)
        self.progress = self._new_epoch(epoch + 1)
        self._save(checkpoints, replicated, is_best)
        patience = config.train.early_stopping_patience
        if patience and self.bad_epochs >= patience:
          logging.info("early stopping: val %s has not improved for %d epochs", monitor, patience)
          break
    checkpoints.close()
    row["params_sha256"] = params_digest(unreplicate(replicated.params))
    return row

  def _agreed_stop(self, stop: StopRequest, done: int) -> bool:
    """Whether to stop now. With several processes they agree every 10 steps (a signal may reach
    only some of them), so that all of them save the same step together."""
    if jax.process_count() == 1:
      return stop.requested is not None
    return done % 10 == 0 and distributed.any_process(stop.requested is not None)


def tensorboard_scalars(row: dict) -> dict[str, float]:
  """An epoch row of metrics.jsonl as TensorBoard tags (`loss/train`, `loss/val`, ...), finite values only.

  Train, validation and the weight average's validation share a chart per metric; the x axis is the epoch.
  """
  scalars = {"optim/learning_rate": row["learning_rate"], "time/epoch_s": row["time_s"]}
  for split in ("train", "val", "val_ema"):
    for key in TENSORBOARD_SCALARS:
      value = row.get(split, {}).get(key)
      if value is not None and np.isfinite(value):
        scalars[f"{key}/{split}"] = value
  return scalars


def _host_cpu() -> str:
  cpu = cpu_info.host()
  return cpu.describe() if cpu else (platform.processor() or platform.machine())


def record_run_info(workdir: str, num_params: int) -> None:
  """Appends this session's machine to run.json: what trained the model, for comparison tables."""
  path = os.path.join(workdir, "run.json")
  info = {"num_params": num_params, "sessions": []}
  if os.path.exists(path):
    with open(path) as f:
      info["sessions"] = json.load(f).get("sessions", [])
  device = jax.local_devices()[0]
  info["sessions"].append({
      "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "platform": device.platform,
      "device_kind": device.device_kind, "local_devices": jax.local_device_count(),
      "processes": jax.process_count(), "host_cpu": _host_cpu(),
      "cpu_count": os.cpu_count(), "jax_version": jax.__version__})
  write_json_atomic(path, info)


def params_digest(params) -> str:
  """A short fingerprint of the parameters, to compare runs and processes at a glance."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(params)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:16]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` (resolved: bloodcell_jax.config.resolve) in `workdir`, resuming if it holds
  checkpoints.

  Returns the last epoch's metrics row with a fingerprint of the final parameters
  (`params_sha256`), or an empty row when a signal stopped the run.
  """
  with RunLock(workdir, jax.process_index()):
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  run = _Run(config, workdir)
  logging.info("data: %d train / %d val images (%s); devices: %d x %s", len(run.data.train), len(run.data.val),
               run.data.how_split, run.num_devices, jax.local_devices()[0].device_kind)
  counts = np.bincount(run.data.train.labels, minlength=NUM_CLASSES)
  logging.info("class counts %s, weights %s", dict(zip(CLASS_NAMES, counts.tolist())),
               dict(zip(CLASS_NAMES, np.round(run.class_weights, 3).tolist())))
  num_params = sum(x.size for x in jax.tree.leaves(run.state.params))
  logging.info("model %s: %.2fM parameters", config.model.name, num_params / 1e6)
  checkpoints = run.open_checkpoints()
  if distributed.is_primary():
    record_run_info(workdir, num_params)
  try:
    row = run.fit(checkpoints)
  except CheckpointWriteError:
    raise  # not closed: Orbax would retry its writes on the full or failing disk; the process exits
  except BaseException:
    checkpoints.close()
    raise
  checkpoints.close()
  return row
