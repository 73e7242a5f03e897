"""Classification metrics from labels and predicted probabilities (NumPy, once per epoch).

Macro averages run over the classes that occur in the labels, so a validation split without
some class is not penalised for it; a class never predicted has precision 0 (sklearn's
zero_division=0). AUC is one-vs-rest per class via the Mann-Whitney statistic with tied scores
counted as half.
"""

import numpy as np

from bloodcell_jax.classes import CLASS_NAMES


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """Rows: true class, columns: predicted class."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve; NaN when only one kind of example is present."""
  n_pos = int(is_positive.sum())
  n_neg = len(is_positive) - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  ranks = np.empty(len(scores), np.float64)
  # Average ranks (1-based) over ties.
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  average = first + (counts + 1) / 2.0
  ranks[order] = np.repeat(average, counts)
  return float((ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
  """accuracy, balanced_accuracy, macro precision/recall/f1, macro OvR AUC, per-class recall."""
  num_classes = probs.shape[-1]
  predictions = probs.argmax(-1)
  matrix = confusion_matrix(labels, predictions, num_classes)
  support = matrix.sum(1)
  predicted = matrix.sum(0)
  tp = np.diag(matrix).astype(np.float64)
  present = support > 0
  recall = np.divide(tp, support, out=np.zeros(num_classes), where=present)
  precision = np.divide(tp, predicted, out=np.zeros(num_classes), where=predicted > 0)
  f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes),
                 where=(precision + recall) > 0)
  aucs = [binary_auc(labels == c, probs[:, c]) for c in range(num_classes)]
  valid_aucs = [a for a in aucs if not np.isnan(a)]
  names = CLASS_NAMES if num_classes == len(CLASS_NAMES) else [str(c) for c in range(num_classes)]
  return {
      "accuracy": float(tp.sum() / max(len(labels), 1)),
      "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
      "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
      "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
      "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
      "macro_auc": float(np.mean(valid_aucs)) if valid_aucs else float("nan"),
      "per_class_recall": {names[c]: float(recall[c]) for c in range(num_classes) if present[c]},
  }
