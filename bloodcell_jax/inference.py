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

from bloodcell_jax import checkpointing, distributed, explain, open_set, report, trust, tta
from bloodcell_jax.atomic_files import write_bytes_atomic, write_text_atomic
from bloodcell_jax.augment import augment_uint8, without_mixing
from bloodcell_jax.classes import CLASS_NAMES, NUM_CLASSES
from bloodcell_jax.config import check_batch_size, load_run_config, resolve_tta, served_weights, step_config
from bloodcell_jax.data.prepare import load_eval_set, load_train_val
from bloodcell_jax.data.sources import ImageSet
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.evaluation import evaluate
from bloodcell_jax.models import create_model
from bloodcell_jax.robustness import CORRUPTIONS, corrupt
from bloodcell_jax.steps import pmapped_steps

REPORT_DIR = "report"


class RestoredModel:
  """A run's checkpoint on the local devices, with what was fitted for it (trust.py) where it exists.

  `evaluate(data, tta_name)` gives (metrics, outputs): "probs", "tta_probs" (or None), "logits" and
  "features" of the plain view.
  """

  def __init__(self, config, workdir: str, checkpoint: str, tta_name: str = "none", with_trust: bool = True):
    self.num_devices = jax.local_device_count()
    check_batch_size(config.train.batch_size, self.num_devices)
    try:
      variables, self.step = checkpointing.restore_variables(workdir, checkpoint)
      self.weights = trust.weights_fingerprint(variables)
      self.trust = trust.load(workdir, self.step, self.weights) if with_trust else None
    except FileNotFoundError as e:
      raise UserInputError(str(e)) from None
    except checkpointing.Damaged as e:
      raise UserInputError(f"{e}; refit it with --mode=calibrate --checkpoint={self.step}") from None
    self.num_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    self.config, self.tta, self.workdir = config, tta_name, workdir
    self.model = create_model(config.model, NUM_CLASSES)
    self.variables = variables
    self._steps = {}
    self._grad_cam = None
    self._weights = jax_utils.replicate(jnp.ones(NUM_CLASSES))
    self._replicated = jax_utils.replicate(variables)
    logging.info("using the '%s' checkpoint of %s (step %d)", checkpoint, workdir, self.step)

  def evaluate(self, data: ImageSet, tta_name: str | None = None, desc: str = "eval") -> tuple[dict, dict]:
    tta_name = self.tta if tta_name is None else tta_name
    if tta_name not in self._steps:
      self._steps[tta_name] = pmapped_steps(self.model, None, step_config(self.config, tta_name, outputs=True))[1]
    metrics, outputs = evaluate(self._steps[tta_name], self._replicated, data, self._weights,
                                self.config.train.batch_size, self.num_devices, desc)
    metrics.pop("loss")  # unweighted here; the weighted training loss is in metrics.jsonl
    return metrics, outputs

  def explain(self, images: np.ndarray) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] for the predicted class of each image, on one device, in
    batches of the run's batch size (the last one padded, so one compilation serves all)."""
    if self._grad_cam is None:
      self._grad_cam = explain.make_grad_cam(self.model, tuple(self.config.data.mean), tuple(self.config.data.std))
    size = self.config.train.batch_size
    maps = []
    for start in range(0, len(images), size):
      chunk = images[start:start + size]
      padded = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
      heatmaps, _ = self._grad_cam(self.variables, padded, np.full(size, -1, np.int32))
      maps.append(np.asarray(heatmaps)[:len(chunk)])
    return np.concatenate(maps) if maps else np.zeros((0,) + images.shape[1:3], np.float32)

  def answers(self, outputs: dict, tta_name: str | None = None) -> dict:
    """What predict reports: the probabilities shown (test-time-averaged where TTA is on), calibrated
    where a temperature was fitted for these views, and, with a fitted rejector, each image's
    rejection score and reason ("" where kept)."""
    tta_name = self.tta if tta_name is None else tta_name
    probs = outputs["probs"] if outputs["tta_probs"] is None else outputs["tta_probs"]
    if self.trust is None:
      return {"probs": probs, "calibrated": False}
    calibrated = self.trust.calibrate(probs, tta_name)
    rejector = self.trust.rejector
    scores = open_set.scores(rejector.method, rejector.arrays, outputs["features"], outputs["logits"])
    return {"probs": calibrated, "calibrated": self.trust.temperature(tta_name) is not None,
            "reject_scores": scores, "reasons": self.trust.decide(scores, calibrated)}


def fit_trust(workdir: str, checkpoint: str = "best", config=None, tta_flag: str | None = None,
              save: bool = True) -> trust.Trust:
  """`--mode=calibrate`: fits the temperature and the rejector for `checkpoint` (trust.py) on the
  run's own split: features of the training images, as they are and as the run's augmentation
  changes them (so stain, blur or lighting the model was trained to accept do not look foreign),
  for the rejector; the validation split for the threshold and the temperature. Run at the end of
  training for the best checkpoint."""
  config = config or load_run_config(workdir)
  tta_name = resolve_tta(config, tta_flag)
  data = load_train_val(config.data)
  model = RestoredModel(config, workdir, checkpoint, tta_name, with_trust=False)
  start = time.time()
  _, train_outputs = model.evaluate(data.train, "none", desc="features of the training split")
  blocks, labels = train_outputs["features"], data.train.labels
  policy = without_mixing(config.data.augment)
  if policy not in ("none", "dihedral"):
    augmented = ImageSet(augment_uint8(data.train.images, policy, config.seed), labels, data.train.ids)
    _, augmented_outputs = model.evaluate(augmented, "none", desc="features of augmented training images")
    blocks = tuple(np.concatenate(pair) for pair in zip(blocks, augmented_outputs["features"]))
    labels = np.concatenate([labels, labels])
  _, val_outputs = model.evaluate(data.val, tta_name, desc="validation split")
  fitted = trust.fit(model.step, blocks, labels, val_outputs, data.val.labels,
                     tta_name, config.reject.method, config.reject.false_rejection, config.reject.min_confidence,
                     NUM_CLASSES, model.weights)
  if save and distributed.is_primary():
    trust.save(workdir, fitted)
  ece = fitted.summary["expected_calibration_error"][tta_name if tta_name in fitted.temperatures else "none"]
  print(f"fitted for step {model.step} ({time.time() - start:.0f} s): temperature "
        f"{', '.join(f'{t:.3f} ({name})' for name, t in fitted.temperatures.items())}, calibration error "
        f"{ece['before']:.4f} -> {ece['after']:.4f}; rejector {fitted.rejector.method}, threshold "
        f"{fitted.rejector.threshold:.4g} ({config.reject.false_rejection:.1%} of validation cells rejected)")
  return fitted


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


def _robustness(model: RestoredModel, data: ImageSet, clean: dict, corruptions: list[str], severity: float
                ) -> tuple[dict, list]:
  """Accuracy on the clean data (already measured) and under each corruption; and each corrupted
  copy's answers (for calibration and rejection on corrupted data)."""
  keys = ("accuracy", "balanced_accuracy", "macro_f1")
  rows = {"clean": {k: clean[k] for k in keys}}
  answers = []
  print(f"  {'clean':<14} accuracy {clean['accuracy']:.4f}  balanced {clean['balanced_accuracy']:.4f}")
  for corruption in corruptions:
    metrics, outputs = model.evaluate(corrupt(data, corruption, severity))
    answers.append(_answers(model, outputs, data.labels))
    rows[corruption] = {k: metrics[k] for k in keys}
    print(f"  {corruption:<14} accuracy {metrics['accuracy']:.4f}  balanced {metrics['balanced_accuracy']:.4f}")
  mean = float(np.mean([rows[c]["accuracy"] for c in corruptions])) if corruptions else None
  if mean is not None:
    print(f"  mean over {len(corruptions)} corruptions: accuracy {mean:.4f} (clean {clean['accuracy']:.4f})")
  return {"severity": severity, "results": rows, "mean_corrupted_accuracy": mean}, answers


def _answers(model: RestoredModel, outputs: dict, labels: np.ndarray) -> report.Answers | None:
  """What predict would answer on a labelled set, for the report (None without a fitted record)."""
  if model.trust is None:
    return None
  shown = model.answers(outputs)
  raw = outputs["probs"] if outputs["tta_probs"] is None else outputs["tta_probs"]
  return report.Answers(labels, raw, shown["probs"], shown["reject_scores"], shown["reasons"])


def _explanations(model: RestoredModel, data: ImageSet, probs: np.ndarray, per_class: int = 2) -> dict:
  """Class-activation maps of a few correctly and wrongly classified images of each class."""
  predictions = probs.argmax(-1)
  chosen = []
  for c in range(NUM_CLASSES):
    of_class = data.labels == c
    for right in (True, False):
      chosen += np.flatnonzero(of_class & ((predictions == c) == right))[:per_class].tolist()
  chosen = np.array(sorted(chosen), np.int64)
  heatmaps = model.explain(data.images[chosen]) if len(chosen) else np.zeros((0,) + data.images.shape[1:3])
  return {"indices": chosen, "heatmaps": heatmaps, "predictions": predictions[chosen]}


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
  metrics, outputs = model.evaluate(data)
  robustness, corrupted = _robustness(model, data, metrics, corruptions, severity) if corruptions else (None, [])
  answers = _answers(model, outputs, data.labels)
  explanations = _explanations(model, data, outputs["probs"])
  history = report.load_history(workdir)
  best_epoch = next((row["epoch"] for row in history if row["step"] == model.step), None)
  device = jax.local_devices()[0]
  context = {
      "run": os.path.basename(os.path.normpath(workdir)), "model": describe_model(config),
      "parameters": f"{model.num_params:,}", "image size": f"{config.data.image_size} px",
      "checkpoint": f"{checkpoint} (step {model.step}" + (f", epoch {best_epoch + 1})" if best_epoch is not None
                                                          else ")"),
      "weights": {"ema": f"moving average (EMA, decay {config.ema.decay})", "raw": "raw"}[served_weights(config)],
      "data": f"{data_label or 'validation split'} ({len(data)} images)",
      "test-time augmentation": f"{tta_name} ({len(tta.VIEWS[tta_name])} views)",
      "evaluated on": f"{jax.local_device_count()} x {device.device_kind} ({device.platform}), JAX {jax.__version__}",
      "date": time.strftime("%Y-%m-%d %H:%M"),
  }
  if not distributed.is_primary():
    return {}
  if answers is None:
    logging.warning("no temperature or rejector fitted for step %d: the report has no calibration or rejection "
                    "section (--mode=calibrate --checkpoint=%d fits them)", model.step, model.step)
  evaluation = report.Evaluation(data.images, data.labels, data.ids, outputs["probs"], outputs["tta_probs"], tta_name,
                                 answers=answers, corrupted_answers=report.Answers.join(corrupted),
                                 trust=model.trust, explanations=explanations)
  directory = os.path.join(workdir, REPORT_DIR, name)
  record = {"data": data_label or "validation split", "num_images": len(data), "checkpoint": checkpoint,
            "step": model.step, "epoch": best_epoch, "weights": served_weights(config), "tta_views": tta_name, "num_params": model.num_params,
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


def prediction_rows(ids, probs: np.ndarray, top_k: int, reject_scores: np.ndarray | None = None,
                    reasons: np.ndarray | None = None) -> list[list]:
  """CSV rows: id, predicted class, confidence, the top-k classes with probabilities, all
  probabilities, and where a rejector ran: rejected (true/false), its score and the reason."""
  header = ["id", "predicted", "confidence"]
  for rank in range(2, top_k + 1):
    header += [f"top{rank}", f"p_top{rank}"]
  header += [f"p_{name}" for name in CLASS_NAMES]
  rejecting = reject_scores is not None
  rows = [header + (["rejected", "reject_score", "reject_reason"] if rejecting else [])]
  order = np.argsort(-probs, axis=-1, kind="stable")
  for i, (image_id, p, ranked) in enumerate(zip(ids, probs, order)):
    row = [image_id, CLASS_NAMES[ranked[0]], f"{p[ranked[0]]:.6f}"]
    for c in ranked[1:top_k]:
      row += [CLASS_NAMES[c], f"{p[c]:.6f}"]
    row += [f"{v:.6f}" for v in p]
    if rejecting:
      row += ["true" if reasons[i] else "false", f"{reject_scores[i]:.6g}", reasons[i]]
    rows.append(row)
  return rows


def _explanation_files(directory: str, ids, images: np.ndarray, heatmaps: np.ndarray) -> list[str]:
  """One overlay PNG per image, named by its position and file name (ids need not be unique)."""
  from PIL import Image

  os.makedirs(directory, exist_ok=True)
  paths = []
  for i, (image_id, image, heatmap) in enumerate(zip(ids, images, heatmaps)):
    stem = os.path.splitext(os.path.basename(str(image_id).replace("#", "image")))[0][:80] or "image"
    path = os.path.join(directory, f"{i:05d}_{stem}.png")
    buffer = io.BytesIO()
    Image.fromarray(explain.overlay(image, heatmap)).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    paths.append(path)
  return paths


def run_predict(workdir: str, data_path: str, output: str | None, checkpoint: str = "best",
                tta_flag: str | None = None, top_k: int = 1, reject: bool = True, explain_dir: str | None = None
                ) -> str:
  """A CSV with one row per image (see `prediction_rows`): TTA-averaged probabilities where TTA is on,
  calibrated and checked by the rejector fitted for the checkpoint (unless `reject` is False);
  with `explain_dir`, a class-activation overlay per image there."""
  if not data_path:
    raise UserInputError("--mode=predict needs --data (a folder of images, an npz file, or image files)")
  if not 1 <= top_k <= NUM_CLASSES:
    raise UserInputError(f"--top_k={top_k} must lie in [1, {NUM_CLASSES}]")
  config = load_run_config(workdir)
  tta_name = resolve_tta(config, tta_flag)
  data = load_eval_set(data_path, config.data.image_size)
  model = RestoredModel(config, workdir, checkpoint, tta_name)
  if reject and model.trust is None:
    raise UserInputError(f"{workdir}: no rejector was fitted for checkpoint step {model.step}; fit one with "
                         f"--mode=calibrate --checkpoint={model.step}, or pass --reject=off")
  _, outputs = model.evaluate(data)
  answers = model.answers(outputs)
  if not answers["calibrated"]:
    logging.warning("probabilities are not calibrated: no temperature was fitted for step %d with %s views",
                    model.step, tta_name)
  scores, reasons = (answers["reject_scores"], answers["reasons"]) if reject else (None, None)
  output = output or os.path.join(workdir, "predictions.csv")
  buffer = io.StringIO()
  csv.writer(buffer).writerows(prediction_rows(data.ids, answers["probs"], top_k, scores, reasons))
  if distributed.is_primary():
    write_text_atomic(output, buffer.getvalue())
    if explain_dir:
      _explanation_files(explain_dir, data.ids, data.images, model.explain(data.images))
  rejected = f"; {int((reasons != '').sum())} rejected" if reject else ""
  print(f"wrote {len(data)} predictions to {output} (test-time augmentation: {tta_name}{rejected})"
        + (f"; explanations in {explain_dir}" if explain_dir else ""))
  return output
