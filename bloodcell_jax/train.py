"""Training and evaluation loop: data, model, optimiser, pmapped steps, metrics, checkpoints.

The run directory (workdir) receives `config.json` (the resolved config), `split.json` (which image
went to train and validation), `metrics.jsonl` (one row per epoch) and the Orbax checkpoints.
Re-running with the same workdir resumes from the newest checkpoint at an epoch boundary.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import jax_utils
from tqdm import tqdm

from bloodcell_jax import checkpointing, optim
from bloodcell_jax.augment import POLICIES
from bloodcell_jax.classes import CLASS_NAMES, NUM_CLASSES
from bloodcell_jax.data import pipeline
from bloodcell_jax.data.prepare import load_train_val
from bloodcell_jax.data.split import save_split
from bloodcell_jax.data.sources import ImageSet, resolve_path
from bloodcell_jax.errors import TrainingDiverged, UserInputError
from bloodcell_jax.losses import class_weights as compute_class_weights
from bloodcell_jax.metrics import classification_metrics
from bloodcell_jax.models import create_model
from bloodcell_jax.models.depthwise import IMPLEMENTATIONS
from bloodcell_jax.steps import StepConfig, create_train_state, init_params, pmapped_steps, unreplicate


def check_batch_size(global_batch: int, num_devices: int) -> int:
  """Examples per device; the global batch must split evenly over the local devices."""
  if global_batch <= 0 or global_batch % num_devices:
    raise UserInputError(
        f"config: train.batch_size={global_batch} is not divisible by the {num_devices} local devices")
  return global_batch // num_devices


def step_config(config: ml_collections.ConfigDict) -> StepConfig:
  return StepConfig(num_classes=NUM_CLASSES, mean=tuple(config.data.mean), std=tuple(config.data.std),
                    label_smoothing=config.loss.label_smoothing, l2=config.loss.l2,
                    augment=config.data.augment)


def write_json_atomic(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def evaluate(p_eval, params, data: ImageSet, class_weights, global_batch: int, num_devices: int,
             desc: str = "eval") -> tuple[dict, np.ndarray]:
  """Metrics and probabilities over every example of `data` (replicated `params`)."""
  loss_sum = weight_sum = 0.0
  probs = []
  batches = pipeline.to_devices(pipeline.eval_batches(data, global_batch, num_devices))
  total = -(-len(data) // global_batch)
  for batch in tqdm(batches, total=total, desc=desc, leave=False, disable=None):
    metrics, batch_probs = p_eval(params, batch, class_weights)
    probs.append(batch_probs)
    loss_sum += metrics["loss_sum"][0]
    weight_sum += metrics["weight_sum"][0]
  probs = np.concatenate([np.asarray(p).reshape(-1, NUM_CLASSES) for p in jax.device_get(probs)])[:len(data)]
  result = classification_metrics(data.labels, probs) if (data.labels >= 0).all() else {}
  result["loss"] = float(jax.device_get(loss_sum) / max(float(jax.device_get(weight_sum)), 1e-12))
  return result, probs


def _summary(metrics: dict) -> str:
  keys = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
  return " ".join(f"{k.replace('balanced_accuracy', 'bal_acc')} {metrics[k]:.4f}" for k in keys if k in metrics)


def _finite_or_null(obj):
  """NaN/inf (an AUC with one class present) become null, so metrics.jsonl is strict JSON."""
  if isinstance(obj, dict):
    return {k: _finite_or_null(v) for k, v in obj.items()}
  if isinstance(obj, float) and not np.isfinite(obj):
    return None
  return obj


def _truncate_metrics(path: str, last_epoch: int) -> None:
  """Drops rows written after the checkpoint being resumed from (a run killed mid-epoch)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and json.loads(line)["epoch"] <= last_epoch]
  with open(path + ".tmp", "w") as f:
    f.writelines(rows)
  os.replace(path + ".tmp", path)


METRICS = ("loss", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "macro_auc")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects values that would otherwise fail deep inside tracing, with the field's name."""
  choices = {
      "data.augment": (config.data.augment, POLICIES),
      "model.depthwise_impl": (config.model.depthwise_impl, IMPLEMENTATIONS),
      "optim.name": (config.optim.name, optim.OPTIMIZERS),
      "optim.trainable": (config.optim.trainable, optim.TRAINABLE),
      "optim.schedule": (config.optim.schedule, ("cosine", "constant")),
      "train.monitor_metric": (config.train.monitor_metric, METRICS),
  }
  for field, (value, allowed) in choices.items():
    if value not in allowed:
      raise UserInputError(f"config: {field}={value!r} is not one of {', '.join(allowed)}")
  if not 0.0 < config.data.val_fraction < 1.0:
    raise UserInputError(f"config: data.val_fraction={config.data.val_fraction} must lie in (0, 1)")
  if config.data.image_size < 32:
    raise UserInputError(f"config: data.image_size={config.data.image_size} is below the minimum of 32")
  if config.train.num_epochs < 1:
    raise UserInputError(f"config: train.num_epochs={config.train.num_epochs} must be at least 1")
  try:
    create_model(config.model, NUM_CLASSES)
  except ValueError as e:
    raise UserInputError(f"config: {e}") from None


def train_one_epoch(p_train, state, data: ImageSet, class_weights, epoch: int, num_epochs: int,
                    config: ml_collections.ConfigDict, num_devices: int):
  """Runs one epoch of pmapped steps; returns the new (replicated) state and the epoch's train metrics.

  Metrics and probabilities stay on the devices until the epoch ends, so the host never waits
  for a step inside the loop.
  """
  global_batch = config.train.batch_size
  step_metrics, probs, labels = [], [], []
  batches = pipeline.to_devices(pipeline.train_batches(data, global_batch, num_devices, config.seed, epoch),
                                config.train.prefetch)
  for batch in tqdm(batches, total=pipeline.steps_per_epoch(len(data), global_batch),
                    desc=f"epoch {epoch + 1}/{num_epochs}", leave=False, disable=None):
    state, metrics, batch_probs = p_train(state, batch, class_weights)
    step_metrics.append(metrics)
    probs.append(batch_probs)
    labels.append(batch["label"])
  step_metrics, probs, labels = jax.device_get((step_metrics, probs, labels))
  weight_sum = sum(m["weight_sum"][0] for m in step_metrics)
  loss = float(sum(m["loss_sum"][0] for m in step_metrics) / max(weight_sum, 1e-12))
  result = classification_metrics(np.concatenate([l.reshape(-1) for l in labels]),
                                   np.concatenate([p.reshape(-1, NUM_CLASSES) for p in probs]))
  result["loss"] = loss
  return state, result


def architecture_signature(config: ml_collections.ConfigDict) -> dict:
  """The config fields that give parameters their shapes; a checkpoint only fits the same ones.

  (Compute dtype, dropout rates and the depthwise implementation may change on resume.)
  """
  keys = ("name", "variant", "depths", "dims")
  return json.loads(json.dumps({k: config.model.get(k) for k in keys} | {"num_classes": NUM_CLASSES}))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`; returns the last epoch's metrics row."""
  validate_config(config)
  num_devices = jax.local_device_count()
  check_batch_size(config.train.batch_size, num_devices)
  os.makedirs(workdir, exist_ok=True)
  checkpoints = checkpointing.RunCheckpoints(workdir, config.checkpoint.keep)
  model_signature = architecture_signature(config)
  resuming = checkpoints.latest_step() is not None
  if resuming:
    saved_model = checkpoints.latest_meta()["model"]
    if saved_model != model_signature:
      changed = sorted(k for k in set(saved_model) | set(model_signature)
                       if saved_model.get(k) != model_signature.get(k))
      raise UserInputError(f"{workdir}: holds checkpoints of another model (model.{', model.'.join(changed)} "
                           "differ); use another --workdir")
  write_json_atomic(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))

  data = load_train_val(config.data)
  global_batch = config.train.batch_size
  if len(data.train) < global_batch:
    raise UserInputError(f"{resolve_path(config.data.source)}: {len(data.train)} training images, fewer "
                         f"than one batch (train.batch_size={global_batch})")
  save_split(os.path.join(workdir, "split.json"), resolve_path(config.data.source), data.how_split,
             data.train, data.val)
  try:
    weights = compute_class_weights(data.train.labels, NUM_CLASSES, config.loss.class_weights)
  except ValueError as e:
    raise UserInputError(f"config: loss.class_weights: {e}") from None
  counts = np.bincount(data.train.labels, minlength=NUM_CLASSES)
  logging.info("data: %d train / %d val images (%s); devices: %d x %s", len(data.train), len(data.val),
               data.how_split, num_devices, jax.local_devices()[0].device_kind)
  logging.info("class counts %s, weights %s", dict(zip(CLASS_NAMES, counts.tolist())),
               dict(zip(CLASS_NAMES, np.round(weights, 3).tolist())))

  model = create_model(config.model, NUM_CLASSES)
  steps_per_epoch = pipeline.steps_per_epoch(len(data.train), global_batch)
  num_epochs = config.train.num_epochs
  schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch, num_epochs)
  params = init_params(model, config.data.image_size, config.seed)
  tx = optim.create_optimizer(config.optim, params, schedule)
  state = create_train_state(params, tx, config.seed)
  logging.info("model %s: %.2fM parameters", config.model.name,
               sum(x.size for x in jax.tree.leaves(state.params)) / 1e6)

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  monitor = config.train.monitor_metric
  first_epoch, best, bad_epochs = 0, -np.inf, 0
  if resuming:
    state, meta = checkpoints.restore_latest(state)
    first_epoch, best, bad_epochs = meta["epoch"] + 1, meta["best"], meta["bad_epochs"]
    _truncate_metrics(metrics_path, meta["epoch"])
    logging.info("resumed from %s at epoch %d (step %d)", workdir, first_epoch, int(state.step))
  elif os.path.exists(metrics_path):
    os.remove(metrics_path)

  p_train, p_eval = pmapped_steps(model, tx, step_config(config))
  replicated = jax_utils.replicate(state)
  del state
  class_weights = jax_utils.replicate(jnp.asarray(weights))
  row = {}
  try:
    for epoch in range(first_epoch, num_epochs):
      start = time.time()
      replicated, train_metrics = train_one_epoch(p_train, replicated, data.train, class_weights, epoch,
                                                  num_epochs, config, num_devices)
      step = int(jax.device_get(replicated.step[0]))
      if not np.isfinite(train_metrics["loss"]):
        raise TrainingDiverged(f"training loss became {train_metrics['loss']} during epoch {epoch + 1} (by step "
                               f"{step}); the last good checkpoint is kept in {workdir}; lower "
                               "optim.learning_rate or set optim.grad_clip_norm")
      val_metrics, _ = evaluate(p_eval, replicated.params, data.val, class_weights, global_batch, num_devices)
      row = {"epoch": epoch, "step": step, "learning_rate": float(schedule(step)),
             "time_s": round(time.time() - start, 2), "train": train_metrics, "val": val_metrics}
      with open(metrics_path, "a") as f:
        f.write(json.dumps(_finite_or_null(row)) + "\n")
      logging.info("epoch %d/%d  train %s | val %s  (%.1fs)", epoch + 1, num_epochs, _summary(train_metrics),
                   _summary(val_metrics), row["time_s"])

      value = val_metrics[monitor] if monitor != "loss" else -val_metrics["loss"]
      is_best = value > best
      best, bad_epochs = (value, 0) if is_best else (best, bad_epochs + 1)
      meta = {"epoch": epoch, "step": step, "best": float(best), "bad_epochs": bad_epochs,
              "monitor": monitor, "model": model_signature, "class_names": list(CLASS_NAMES)}
      checkpoints.save(step, unreplicate(replicated), meta, is_best)
      patience = config.train.early_stopping_patience
      if patience and bad_epochs >= patience:
        logging.info("early stopping: val %s has not improved for %d epochs", monitor, patience)
        break
  finally:
    checkpoints.close()  # waits for the last asynchronous save
  return row
