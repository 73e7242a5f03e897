"""An evaluation report directory: metrics.json, the four plots and a Markdown page that shows them.

Written at the end of training (validation split, best checkpoint) into `<workdir>/report/validation/`
and by `--mode=eval` into `<workdir>/report/<data name>/`. Metrics and plots describe the plain
predictions; the test-time-augmented ones are reported beside them where TTA is on.
"""

import dataclasses
import json
import os

import numpy as np

from bloodcell_jax import plots, tta
from bloodcell_jax.atomic_files import write_bytes_atomic, write_json_atomic, write_text_atomic
from bloodcell_jax.metrics import classification_metrics, detailed_metrics, expected_calibration_error, reliability_bins

SUMMARY = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
           ("macro_precision", "macro precision"), ("macro_recall", "macro recall"), ("macro_f1", "macro F1"),
           ("macro_auc", "macro AUC (one-vs-rest)"), ("expected_calibration_error", "expected calibration error"))
FIGURES = (("training_curves.png", "Training curves"), ("confusion_matrix.png", "Confusion matrix"),
           ("reliability.png", "Reliability diagram"), ("misclassified.png", "Most confidently misclassified"))


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """A model's outputs on a labelled image set."""

  images: np.ndarray  # (N, H, W, 3) uint8
  labels: np.ndarray
  ids: np.ndarray
  probs: np.ndarray  # plain predictions
  tta_probs: np.ndarray | None = None
  tta: str = "none"


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


def _fmt(value) -> str:
  return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.4f}"


def _markdown(title: str, context: dict, metrics: dict, robustness: dict | None, figures: list[str]) -> str:
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
  for file, draw in figures.items():
    write_bytes_atomic(os.path.join(directory, file), draw())
  result = {**record, **metrics}
  if robustness:
    result["robustness"] = robustness
  write_json_atomic(os.path.join(directory, "metrics.json"), result)
  write_text_atomic(os.path.join(directory, "report.md"), _markdown(title, context, metrics, robustness, list(figures)))
  return result
