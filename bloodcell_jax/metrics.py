"""Classification metrics from labels and predicted probabilities (NumPy, once per epoch).

Macro averages run over the classes that occur in the labels, so a validation split without
some class is not penalised for it; a class never predicted has precision 0 (sklearn's
zero_division=0). AUC is one-vs-rest per class via the Mann-Whitney statistic with tied scores
counted as half. Calibration uses the top-class confidence in equal-width bins (Guo et al. 2017).
"""

import numpy as np

from bloodcell_jax.classes import CLASS_NAMES


# What train.monitor_metric may name: the validation loss, or one of classification_metrics' figures.
MONITORED = ("loss", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "macro_auc")

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


def _per_class(labels: np.ndarray, probs: np.ndarray):
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
  aucs = np.array([binary_auc(labels == c, probs[:, c]) for c in range(num_classes)])
  return matrix, support, tp, precision, recall, f1, aucs


def _class_names(num_classes: int) -> list[str]:
  return list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else [str(c) for c in range(num_classes)]


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
  """accuracy, balanced_accuracy, macro precision/recall/f1, macro OvR AUC, per-class recall."""
  num_classes = probs.shape[-1]
  _, support, tp, precision, recall, f1, aucs = _per_class(labels, probs)
  present = support > 0
  valid_aucs = aucs[~np.isnan(aucs)]
  names = _class_names(num_classes)
  return {
      "accuracy": float(tp.sum() / max(len(labels), 1)),
      "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
      "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
      "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
      "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
      "macro_auc": float(np.mean(valid_aucs)) if len(valid_aucs) else float("nan"),
      "per_class_recall": {names[c]: float(recall[c]) for c in range(num_classes) if present[c]},
  }


def reliability_bins(labels: np.ndarray, probs: np.ndarray, num_bins: int = 15) -> dict:
  """Per confidence bin (equal width on [0, 1]): example count, mean confidence, accuracy (NaN if empty)."""
  confidence = probs.max(-1)
  correct = probs.argmax(-1) == labels
  index = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)  # bins (lo, hi]
  count = np.bincount(index, minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_confidence = np.bincount(index, confidence, num_bins) / count
    accuracy = np.bincount(index, correct.astype(np.float64), num_bins) / count
  return {"edges": np.linspace(0.0, 1.0, num_bins + 1), "count": count, "confidence": mean_confidence,
          "accuracy": accuracy}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, num_bins: int = 15) -> float:
  """Sum over bins of (share of examples) x |accuracy - mean confidence|."""
  bins = reliability_bins(labels, probs, num_bins)
  filled = bins["count"] > 0
  gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
  return float((bins["count"][filled] * gaps).sum() / max(len(labels), 1))


def detailed_metrics(labels: np.ndarray, probs: np.ndarray, num_bins: int = 15) -> dict:
  """`classification_metrics` plus per-class precision/recall/F1/AUC/support, ECE and the confusion
  matrix (rows true, columns predicted): what an evaluation report shows."""
  num_classes = probs.shape[-1]
  matrix, support, _, precision, recall, f1, aucs = _per_class(labels, probs)
  result = classification_metrics(labels, probs)
  result["expected_calibration_error"] = expected_calibration_error(labels, probs, num_bins)
  result["per_class"] = {
      name: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
             "auc": None if np.isnan(aucs[c]) else float(aucs[c]), "support": int(support[c])}
      for c, name in enumerate(_class_names(num_classes))}
  result["confusion_matrix"] = matrix.tolist()
  result["class_names"] = _class_names(num_classes)
  return result


def accuracy_coverage(correct: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Selective classification: keeping the images with the lowest `scores` first, the share kept
  (coverage) and the accuracy on what is kept, at every cut-off."""
  order = np.argsort(np.asarray(scores), kind="stable")
  kept_correct = np.cumsum(np.asarray(correct, np.float64)[order])
  kept = np.arange(1, len(order) + 1)
  return kept / max(len(order), 1), kept_correct / kept


def rejection_summary(labels: np.ndarray, probs: np.ndarray, reasons: np.ndarray, num_classes: int) -> dict:
  """Share rejected (overall, per true class, per reason) and accuracy on all and on the kept images."""
  rejected = np.asarray(reasons) != ""
  correct = np.asarray(probs).argmax(-1) == labels
  names = _class_names(num_classes)
  return {
      "rejected": float(rejected.mean()) if len(rejected) else 0.0,
      "by_reason": {str(r): float((reasons == r).mean()) for r in sorted(set(reasons.tolist()) - {""})},
      "rejected_by_class": {names[c]: float(rejected[labels == c].mean()) for c in range(num_classes)
                            if (labels == c).any()},
      "accuracy_all": float(correct.mean()) if len(correct) else 0.0,
      "accuracy_kept": float(correct[~rejected].mean()) if (~rejected).any() else float("nan"),
  }
