"""`--mode=eval` and `--mode=predict`: a trained run's checkpoint applied to a data source.

Eval writes an evaluation report (bloodcell_jax/report.py) into `<workdir>/report/<data name>/`,
with robustness under corruptions in the same pass over the restored model; predict writes a CSV.
"""

import csv
import io
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import jax_utils

from bloodcell_jax import checkpointing, distributed, report, tta
from bloodcell_jax.atomic_files import write_text_atomic
from bloodcell_jax.classes import CLASS_NAMES, NUM_CLASSES
from bloodcell_jax.config import check_batch_size, load_run_config, resolve_tta, step_config
from bloodcell_jax.data.prepare import load_eval_set, load_train_val
from bloodcell_jax.data.sources import ImageSet
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.evaluation import evaluate
from bloodcell_jax.models import create_model
from bloodcell_jax.robustness import CORRUPTIONS, corrupt
from bloodcell_jax.steps import pmapped_steps

REPORT_DIR = "report"


class RestoredModel:
  """A run's checkpoint on the local devices; `evaluate(data)` gives (metrics, probs, tta_probs)."""

  def __init__(self, config, workdir: str, checkpoint: str, tta_name: str = "none"):
    self.num_devices = jax.local_device_count()
    check_batch_size(config.train.batch_size, self.num_devices)
    try:
      variables, self.step = checkpointing.restore_variables(workdir, checkpoint)
    except FileNotFoundError as e:
      raise UserInputError(str(e)) from None
    self.num_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    self.config, self.tta = config, tta_name
    model = create_model(config.model, NUM_CLASSES)
    _, self._p_eval = pmapped_steps(model, None, step_config(config, tta_name))
    self._weights = jax_utils.replicate(jnp.ones(NUM_CLASSES))
    self._variables = jax_utils.replicate(variables)
    logging.info("using the '%s' checkpoint of %s (step %d)", checkpoint, workdir, self.step)

  def evaluate(self, data: ImageSet):
    metrics, probs, tta_probs = evaluate(self._p_eval, self._variables, data, self._weights,
                                         self.config.train.batch_size, self.num_devices)
    metrics.pop("loss")  # unweighted here; the weighted training loss is in metrics.jsonl
    return metrics, probs, tta_probs


def _data_to_use(config, data_path: str | None) -> tuple[ImageSet, str]:
  if data_path:
    return load_eval_set(data_path, config.data.image_size), os.path.basename(os.path.normpath(data_path))
  return load_train_val(config.data).val, "validation"


def format_confusion(matrix: np.ndarray) -> str:
  width = max(6, len(str(matrix.max())) + 1)
  head = " " * 14 + "".join(f"{name[:width - 1]:>{width}}" for name in CLASS_NAMES)
  rows = [f"{CLASS_NAMES[i]:>13} " + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(matrix)]
  return "\n".join([head] + rows)


def _check_corruptions(corruptions: list[str], severity: float) -> list[str]:
  corruptions = list(CORRUPTIONS) if corruptions == ["all"] else corruptions
  unknown = [c for c in corruptions if c not in CORRUPTIONS]
  if unknown:
    raise UserInputError(f"--corruptions: unknown {', '.join(unknown)}; choose from all, {', '.join(CORRUPTIONS)}")
  if not 0.0 <= severity <= 1.0:
    raise UserInputError(f"--severity={severity} must lie in [0, 1]")
  return corruptions


def _robustness(model: RestoredModel, data: ImageSet, clean: dict, corruptions: list[str], severity: float) -> dict:
  """Accuracy on the clean data (already measured) and under each corruption."""
  keys = ("accuracy", "balanced_accuracy", "macro_f1")
  rows = {"clean": {k: clean[k] for k in keys}}
  print(f"  {'clean':<14} accuracy {clean['accuracy']:.4f}  balanced {clean['balanced_accuracy']:.4f}")
  for corruption in corruptions:
    metrics, _, _ = model.evaluate(corrupt(data, corruption, severity))
    rows[corruption] = {k: metrics[k] for k in keys}
    print(f"  {corruption:<14} accuracy {metrics['accuracy']:.4f}  balanced {metrics['balanced_accuracy']:.4f}")
  mean = float(np.mean([rows[c]["accuracy"] for c in corruptions])) if corruptions else None
  if mean is not None:
    print(f"  mean over {len(corruptions)} corruptions: accuracy {mean:.4f} (clean {clean['accuracy']:.4f})")
  return {"severity": severity, "results": rows, "mean_corrupted_accuracy": mean}


def describe_model(config) -> str:
  model = config.model
  if model.name == "convnext":
    return (f"ConvNeXt-{model.variant}" if not model.depths else
            f"ConvNeXt depths {tuple(model.depths)} dims {tuple(model.dims)}")
  if model.name == "efficientnet":
    scaled = [f"{k.split('_')[0]} x{model[k]}" for k in ("width_multiplier", "depth_multiplier")
              if model[k] != 1.0]
    return model.variant + (f" ({', '.join(scaled)})" if scaled else "")
  return "CNN baseline" if model.name == "cnn" else model.name


def evaluate_and_report(workdir: str, config, data: ImageSet, name: str, checkpoint: str, tta_name: str,
                        corruptions: list[str] = (), severity: float = 0.8, data_label: str | None = None) -> dict:
  """Evaluates `checkpoint` on `data` and writes `<workdir>/report/<name>/`; returns its metrics."""
  if (data.labels < 0).any():
    raise UserInputError(f"{data_label}: has no labels; use --mode=predict for unlabelled images")
  corruptions = _check_corruptions(list(corruptions), severity)
  model = RestoredModel(config, workdir, checkpoint, tta_name)
  metrics, probs, tta_probs = model.evaluate(data)
  robustness = _robustness(model, data, metrics, corruptions, severity) if corruptions else None
  history = report.load_history(workdir)
  best_epoch = next((row["epoch"] for row in history if row["step"] == model.step), None)
  device = jax.local_devices()[0]
  context = {
      "run": os.path.basename(os.path.normpath(workdir)), "model": describe_model(config),
      "parameters": f"{model.num_params:,}", "image size": f"{config.data.image_size} px",
      "checkpoint": f"{checkpoint} (step {model.step}" + (f", epoch {best_epoch + 1})" if best_epoch is not None
                                                          else ")"),
      "data": f"{data_label or 'validation split'} ({len(data)} images)",
      "test-time augmentation": f"{tta_name} ({len(tta.VIEWS[tta_name])} views)",
      "evaluated on": f"{jax.local_device_count()} x {device.device_kind} ({device.platform}), JAX {jax.__version__}",
      "date": time.strftime("%Y-%m-%d %H:%M"),
  }
  if not distributed.is_primary():
    return {}
  evaluation = report.Evaluation(data.images, data.labels, data.ids, probs, tta_probs, tta_name)
  directory = os.path.join(workdir, REPORT_DIR, name)
  record = {"data": data_label or "validation split", "num_images": len(data), "checkpoint": checkpoint,
            "step": model.step, "epoch": best_epoch, "tta_views": tta_name, "num_params": model.num_params,
            "device": f"{jax.local_device_count()} x {device.device_kind}", "jax_version": jax.__version__}
  result = report.write_report(directory, evaluation, title=f"{context['run']}: {name}", context=context,
                               record=record, history=history, best_epoch=best_epoch, robustness=robustness)
  print(f"{context['data']}, checkpoint '{checkpoint}' (step {model.step})")
  for key in ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "macro_auc"):
    extra = f"   with {tta_name} TTA {result['tta'][key]:.4f}" if "tta" in result else ""
    print(f"  {key:<18} {metrics[key]:.4f}{extra}")
  print("confusion matrix (rows: true class, columns: predicted)")
  print(format_confusion(np.array(result["confusion_matrix"])))
  print(f"report: {os.path.join(directory, 'report.md')}")
  return result


def run_eval(workdir: str, data_path: str | None, checkpoint: str = "best", tta_flag: str | None = None,
             corruptions: list[str] = (), severity: float = 0.8) -> dict:
  """`--mode=eval`: the report for `data_path` (default: the run's validation split)."""
  config = load_run_config(workdir)
  tta_name = resolve_tta(config, tta_flag)
  _check_corruptions(list(corruptions), severity)
  data, name = _data_to_use(config, data_path)
  return evaluate_and_report(workdir, config, data, name, checkpoint, tta_name, corruptions, severity,
                             data_label=data_path)


def prediction_rows(ids, probs: np.ndarray, top_k: int) -> list[list]:
  """CSV rows: id, predicted class, confidence, the top-k classes with probabilities, all probabilities."""
  header = ["id", "predicted", "confidence"]
  for rank in range(2, top_k + 1):
    header += [f"top{rank}", f"p_top{rank}"]
  rows = [header + [f"p_{name}" for name in CLASS_NAMES]]
  order = np.argsort(-probs, axis=-1, kind="stable")
  for image_id, p, ranked in zip(ids, probs, order):
    row = [image_id, CLASS_NAMES[ranked[0]], f"{p[ranked[0]]:.6f}"]
    for c in ranked[1:top_k]:
      row += [CLASS_NAMES[c], f"{p[c]:.6f}"]
    rows.append(row + [f"{v:.6f}" for v in p])
  return rows


def run_predict(workdir: str, data_path: str, output: str | None, checkpoint: str = "best",
                tta_flag: str | None = None, top_k: int = 1) -> str:
  """A CSV with one row per image (see `prediction_rows`); TTA-averaged probabilities where TTA is on."""
  if not data_path:
    raise UserInputError("--mode=predict needs --data (a folder of images, an npz file, or image files)")
  if not 1 <= top_k <= NUM_CLASSES:
    raise UserInputError(f"--top_k={top_k} must lie in [1, {NUM_CLASSES}]")
  config = load_run_config(workdir)
  tta_name = resolve_tta(config, tta_flag)
  data = load_eval_set(data_path, config.data.image_size)
  _, probs, tta_probs = RestoredModel(config, workdir, checkpoint, tta_name).evaluate(data)
  probs = probs if tta_probs is None else tta_probs
  output = output or os.path.join(workdir, "predictions.csv")
  buffer = io.StringIO()
  csv.writer(buffer).writerows(prediction_rows(data.ids, probs, top_k))
  if distributed.is_primary():
    write_text_atomic(output, buffer.getvalue())
  print(f"wrote {len(data)} predictions to {output} (test-time augmentation: {tta_name})")
  return output
