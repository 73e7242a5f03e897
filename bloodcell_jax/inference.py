"""`--mode=eval` and `--mode=predict`: a trained run's checkpoint applied to a data source."""

import csv
import io
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import jax_utils

from bloodcell_jax import checkpointing
from bloodcell_jax.atomic_files import write_json_atomic, write_text_atomic
from bloodcell_jax.classes import CLASS_NAMES, NUM_CLASSES
from bloodcell_jax.data.prepare import load_eval_set, load_train_val
from bloodcell_jax.data.sources import ImageSet
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.metrics import confusion_matrix
from bloodcell_jax.models import create_model
from bloodcell_jax.robustness import CORRUPTIONS, corrupt
from bloodcell_jax.steps import pmapped_steps
from bloodcell_jax.train import check_batch_size, evaluate, step_config


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserInputError(f"{path}: missing; is {workdir} the --workdir of a training run?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _model_runner(config, workdir: str, checkpoint: str):
  """A function ImageSet -> (metrics, probabilities) with the checkpoint's parameters on the devices."""
  num_devices = jax.local_device_count()
  check_batch_size(config.train.batch_size, num_devices)
  try:
    params, step = checkpointing.restore_params(workdir, checkpoint)
  except FileNotFoundError as e:
    raise UserInputError(str(e)) from None
  model = create_model(config.model, NUM_CLASSES)
  _, p_eval = pmapped_steps(model, None, step_config(config))
  weights = jax_utils.replicate(jnp.ones(NUM_CLASSES))
  params = jax_utils.replicate(params)
  logging.info("using the '%s' checkpoint of %s (step %d)", checkpoint, workdir, step)
  return lambda data: evaluate(p_eval, params, data, weights, config.train.batch_size, num_devices)


def _run_model(config, workdir: str, data: ImageSet, checkpoint: str):
  return _model_runner(config, workdir, checkpoint)(data)


def _data_to_use(config, data_path: str | None) -> tuple[ImageSet, str]:
  if data_path:
    return load_eval_set(data_path, config.data.image_size), os.path.basename(os.path.normpath(data_path))
  return load_train_val(config.data).val, "validation"


def format_confusion(matrix: np.ndarray) -> str:
  width = max(6, len(str(matrix.max())) + 1)
  head = " " * 14 + "".join(f"{name[:width - 1]:>{width}}" for name in CLASS_NAMES)
  rows = [f"{CLASS_NAMES[i]:>13} " + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(matrix)]
  return "\n".join([head] + rows)


def run_eval(workdir: str, data_path: str | None, checkpoint: str = "best") -> dict:
  """Metrics and confusion matrix (rows true, columns predicted), printed and saved under eval/."""
  config = load_run_config(workdir)
  data, name = _data_to_use(config, data_path)
  if (data.labels < 0).any():
    raise UserInputError(f"{data_path}: has no labels; use --mode=predict for unlabelled images")
  metrics, probs = _run_model(config, workdir, data, checkpoint)
  metrics.pop("loss")  # unweighted here; the weighted training loss is in metrics.jsonl
  matrix = confusion_matrix(data.labels, probs.argmax(-1), NUM_CLASSES)
  result = {"data": data_path or "validation split", "checkpoint": checkpoint, "num_images": len(data),
            **metrics, "confusion_matrix": matrix.tolist(), "class_names": list(CLASS_NAMES)}
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  out = os.path.join(workdir, "eval", f"{name}.json")
  write_json_atomic(out, result)
  print(f"{len(data)} images from {result['data']}, checkpoint '{checkpoint}'")
  for key in ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "macro_auc"):
    print(f"  {key:<18} {metrics[key]:.4f}")
  print("confusion matrix (rows: true class, columns: predicted)")
  print(format_confusion(matrix))
  print(f"saved {out}")
  return result


def run_robustness(workdir: str, data_path: str | None, corruptions: list[str], severity: float,
                   checkpoint: str = "best") -> dict:
  """Accuracy on the clean data and under each corruption; printed and saved under eval/."""
  corruptions = list(CORRUPTIONS) if corruptions == ["all"] else corruptions
  unknown = [c for c in corruptions if c not in CORRUPTIONS]
  if unknown:
    raise UserInputError(f"--corruptions: unknown {', '.join(unknown)}; choose from all, {', '.join(CORRUPTIONS)}")
  if not 0.0 <= severity <= 1.0:
    raise UserInputError(f"--severity={severity} must lie in [0, 1]")
  config = load_run_config(workdir)
  data, name = _data_to_use(config, data_path)
  if (data.labels < 0).any():
    raise UserInputError(f"{data_path}: has no labels; robustness needs labelled images")
  run = _model_runner(config, workdir, checkpoint)
  rows = {}
  for corruption in ["clean"] + corruptions:
    metrics, _ = run(data if corruption == "clean" else corrupt(data, corruption, severity))
    rows[corruption] = {k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}
    print(f"  {corruption:<14} accuracy {metrics['accuracy']:.4f}  balanced {metrics['balanced_accuracy']:.4f}")
  mean = float(np.mean([rows[c]["accuracy"] for c in corruptions])) if corruptions else None
  result = {"data": data_path or "validation split", "checkpoint": checkpoint, "num_images": len(data),
            "severity": severity, "results": rows, "mean_corrupted_accuracy": mean}
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  out = os.path.join(workdir, "eval", f"{name}_robustness.json")
  write_json_atomic(out, result)
  if mean is not None:
    print(f"  mean over {len(corruptions)} corruptions: accuracy {mean:.4f} (clean {rows['clean']['accuracy']:.4f})")
  print(f"saved {out}")
  return result


def run_predict(workdir: str, data_path: str, output: str | None, checkpoint: str = "best") -> str:
  """A CSV with one row per image: id, predicted class and the eight class probabilities."""
  if not data_path:
    raise UserInputError("--mode=predict needs --data (a folder of images or an npz file)")
  config = load_run_config(workdir)
  data = load_eval_set(data_path, config.data.image_size)
  _, probs = _run_model(config, workdir, data, checkpoint)
  output = output or os.path.join(workdir, "predictions.csv")
  rows = io.StringIO()
  writer = csv.writer(rows)
  writer.writerow(["id", "predicted"] + [f"p_{name}" for name in CLASS_NAMES])
  for image_id, p in zip(data.ids, probs):
    writer.writerow([image_id, CLASS_NAMES[int(p.argmax())]] + [f"{v:.6f}" for v in p])
  write_text_atomic(output, rows.getvalue())
  print(f"wrote {len(data)} predictions to {output}")
  return output
