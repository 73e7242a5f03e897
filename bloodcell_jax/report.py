"""An evaluation report directory: metrics.json, the plots and a Markdown page that shows them.

Written at the end of training (validation split, best checkpoint) into `<workdir>/report/validation/`
and by `--mode=eval` into `<workdir>/report/<data name>/`. Metrics and plots describe the plain
predictions; the test-time-augmented ones are reported beside them where TTA is on. Where a
temperature and a rejector were fitted for the checkpoint (trust.py), the report also shows what
predict would answer: calibration before and after, and what the rejector sets aside, on the clean
images and on their corrupted copies (`--corruptions`); and class-activation maps of right and
wrong answers.
"""

import dataclasses
import json
import os
from typing import Any

import numpy as np

from bloodcell_jax import explain, plots, tta
from bloodcell_jax.atomic_files import write_bytes_atomic, write_json_atomic, write_text_atomic
from bloodcell_jax.metrics import (accuracy_coverage, classification_metrics, detailed_metrics,
                                   expected_calibration_error, rejection_summary, reliability_bins)

SUMMARY = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
           ("macro_precision", "macro precision"), ("macro_recall", "macro recall"), ("macro_f1", "macro F1"),
           ("macro_auc", "macro AUC (one-vs-rest)"), ("expected_calibration_error", "expected calibration error"))
FIGURES = (("training_curves.png", "Training curves"), ("confusion_matrix.png", "Confusion matrix"),
           ("reliability.png", "Reliability diagram"), ("misclassified.png", "Most confidently misclassified"),
           ("calibration.png", "Calibration: before and after temperature scaling"),
           ("accuracy_coverage.png", "Accuracy against coverage"),
           ("explanations.png", "What the model looked at (Grad-CAM, predicted class)"))


@dataclasses.dataclass(frozen=True)
class Answers:
  """What predict answers on a labelled set: the probabilities it would show before and after
  calibration, the rejection scores and reasons ("" where kept)."""

  labels: np.ndarray
  raw_probs: np.ndarray
  probs: np.ndarray
  reject_scores: np.ndarray
  reasons: np.ndarray

  @staticmethod
  def join(parts: list) -> "Answers | None":
    parts = [p for p in parts if p is not None]
    if not parts:
      return None
    return Answers(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Answers)))


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """A model's outputs on a labelled image set."""

  images: np.ndarray  # (N, H, W, 3) uint8
  labels: np.ndarray
  ids: np.ndarray
  probs: np.ndarray  # plain predictions
  tta_probs: np.ndarray | None = None
  tta: str = "none"
  answers: Answers | None = None  # with a fitted temperature and rejector (trust.Trust)
  corrupted_answers: Answers | None = None  # the same on corrupted copies of the images
  trust: Any = None  # the trust.Trust the answers came from
  explanations: dict | None = None  # {"indices", "heatmaps", "predictions"} of a few images per class


def load_history(workdir: str) -> list[dict]:
  """The epoch rows of a run's metrics.jsonl ([] if there is none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _tta_summary(evaluation: Evaluation) -> dict | None:
  if evaluation.tta_probs is None:
    return None
  summary = classification_metrics(evaluation.labels, evaluation.tta_probs)
  summary["expected_calibration_error"] = expected_calibration_error(evaluation.labels, evaluation.tta_probs)
  summary.pop("per_class_recall")
  return {"views": evaluation.tta, "num_views": len(tta.VIEWS[evaluation.tta]), **summary}


def _trust_summary(evaluation: Evaluation) -> dict | None:
  """Calibration and rejection of predict's answers on the clean (and corrupted) images."""
  if evaluation.answers is None:
    return None
  fitted = evaluation.trust
  summary = {"temperature": fitted.temperature(evaluation.tta), "method": fitted.rejector.method,
             "threshold": fitted.rejector.threshold, "target_false_rejection": fitted.rejector.target_false_rejection,
             "min_confidence": fitted.min_confidence, "data": {}}
  for name, answers in (("clean", evaluation.answers), ("corrupted", evaluation.corrupted_answers)):
    if answers is None:
      continue
    summary["data"][name] = {
        "images": int(len(answers.labels)),
        "expected_calibration_error": {"before": expected_calibration_error(answers.labels, answers.raw_probs),
                                       "after": expected_calibration_error(answers.labels, answers.probs)},
        **rejection_summary(answers.labels, answers.probs, answers.reasons, answers.probs.shape[-1])}
  return summary


def _trust_markdown(summary: dict) -> list[str]:
  temperature = "none fitted for these views" if summary["temperature"] is None else f"{summary['temperature']:.3f}"
  lines = ["", "## Calibration and rejection (what predict answers)", "",
           f"Temperature {temperature}; rejector `{summary['method']}` with threshold {summary['threshold']:.4g} "
           f"(set to reject {summary['target_false_rejection']:.1%} of the validation split's cells); answers below "
           f"calibrated confidence {summary['min_confidence']:.2f} are withheld as low confidence.", "",
           "| images | calibration error before | after | rejected | not a cell | low confidence | accuracy, all "
           "| accuracy, kept |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for name, row in summary["data"].items():
    ece = row["expected_calibration_error"]
    lines.append(f"| {name} ({row['images']}) | {_fmt(ece['before'])} | {_fmt(ece['after'])} | "
                 f"{row['rejected']:.2%} | {row['by_reason'].get('not a cell', 0.0):.2%} | "
                 f"{row['by_reason'].get('low confidence', 0.0):.2%} | {_fmt(row['accuracy_all'])} | "
                 f"{_fmt(row['accuracy_kept'])} |")
  clean = summary["data"]["clean"]["rejected_by_class"]
  lines += ["", "Rejected per true class (clean images): " + ", ".join(f"{k} {v:.1%}" for k, v in clean.items())]
  return lines


def _trust_figures(evaluation: Evaluation) -> dict:
  answers, corrupted = evaluation.answers, evaluation.corrupted_answers
  panels = []
  for name, a in (("clean", answers), ("corrupted", corrupted)):
    if a is not None:
      for when, probs in (("before", a.raw_probs), ("after", a.probs)):
        ece = expected_calibration_error(a.labels, probs)
        panels.append((f"{name}, {when} calibration (ECE {ece:.3f})", reliability_bins(a.labels, probs)))
  correct = answers.probs.argmax(-1) == answers.labels
  kept = answers.reasons == ""
  curves = {"ranked by rejection score": accuracy_coverage(correct, answers.reject_scores),
            "ranked by calibrated confidence": accuracy_coverage(correct, -answers.probs.max(-1))}
  point = {"chosen thresholds": (float(kept.mean()), float(correct[kept].mean()) if kept.any() else 0.0)}
  return {"calibration.png": lambda: plots.reliability_diagrams(panels),
          "accuracy_coverage.png": lambda: plots.accuracy_coverage(curves, point)}


def _fmt(value) -> str:
  return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.4f}"


def _markdown(title: str, context: dict, metrics: dict, robustness: dict | None, figures: list[str],
              trust_summary: dict | None = None) -> str:
  lines = [f"# {title}", "", "| | |", "|---|---|"]
  lines += [f"| {key} | {value} |" for key, value in context.items() if value is not None]
  with_tta = metrics.get("tta")
  lines += ["", "## Metrics", ""]
  if with_tta:
    lines += [f"| metric | without TTA | with TTA ({with_tta['views']}, {with_tta['num_views']} views) |",
              "|---|---:|---:|"]
    lines += [f"| {label} | {_fmt(metrics[key])} | {_fmt(with_tta[key])} |" for key, label in SUMMARY]
  else:
    lines += ["| metric | value |", "|---|---:|"] + [f"| {label} | {_fmt(metrics[key])} |" for key, label in SUMMARY]
  lines += ["", "## Per class (without TTA)", "", "| class | precision | recall | F1 | AUC | images |",
            "|---|---:|---:|---:|---:|---:|"]
  for name, row in metrics["per_class"].items():
    lines.append(f"| {name} | {_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['f1'])} | "
                 f"{_fmt(row['auc'])} | {row['support']} |")
  if robustness:
    lines += ["", f"## Robustness (corruption severity {robustness['severity']})", "",
              "| images | accuracy | balanced accuracy | macro F1 |", "|---|---:|---:|---:|"]
    for name, row in robustness["results"].items():
      lines.append(f"| {name} | {_fmt(row['accuracy'])} | {_fmt(row['balanced_accuracy'])} | {_fmt(row['macro_f1'])} |")
    if robustness["mean_corrupted_accuracy"] is not None:
      lines.append(f"| mean over corruptions | {_fmt(robustness['mean_corrupted_accuracy'])} | | |")
  if trust_summary:
    lines += _trust_markdown(trust_summary)
  for file, caption in FIGURES:
    if file in figures:
      lines += ["", f"## {caption}", "", f"![{caption}]({file})"]
  return "\n".join(lines) + "\n"


def write_report(directory: str, evaluation: Evaluation, *, title: str, context: dict, record: dict,
                 history: list[dict] | None = None, best_epoch: int | None = None,
                 robustness: dict | None = None) -> dict:
  """Writes metrics.json, the plots and report.md into `directory`; returns the metrics.

  `context` is shown as the report's header table; `record` holds the same facts as plain values
  for metrics.json (what the comparison table reads).
  """
  os.makedirs(directory, exist_ok=True)
  metrics = detailed_metrics(evaluation.labels, evaluation.probs)
  with_tta = _tta_summary(evaluation)
  if with_tta:
    metrics["tta"] = with_tta
  figures = {
      "confusion_matrix.png": lambda: plots.confusion_matrix(np.array(metrics["confusion_matrix"]),
                                                             metrics["class_names"]),
      "reliability.png": lambda: plots.reliability_diagram(reliability_bins(evaluation.labels, evaluation.probs),
                                                           metrics["expected_calibration_error"]),
      "misclassified.png": lambda: plots.misclassified_grid(evaluation.images, evaluation.labels, evaluation.probs,
                                                            metrics["class_names"], evaluation.ids),
  }
  if history:
    figures["training_curves.png"] = lambda: plots.training_curves(history, best_epoch)
  trust_summary = _trust_summary(evaluation)
  if trust_summary:
    figures.update(_trust_figures(evaluation))
  shown = evaluation.explanations
  if shown is not None and len(shown["indices"]):
    figures["explanations.png"] = lambda: explain.explanation_grid(
        evaluation.images[shown["indices"]], shown["heatmaps"], evaluation.labels[shown["indices"]],
        shown["predictions"], metrics["class_names"])
  for file, draw in figures.items():
    write_bytes_atomic(os.path.join(directory, file), draw())
  result = {**record, **metrics}
  if robustness:
    result["robustness"] = robustness
  if trust_summary:
    result["trust"] = trust_summary
  write_json_atomic(os.path.join(directory, "metrics.json"), result)
  write_text_atomic(os.path.join(directory, "report.md"), _markdown(title, context, metrics, robustness, list(figures),
                                                                           trust_summary))
  return result
