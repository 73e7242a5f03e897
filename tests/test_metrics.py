import itertools

import numpy as np
import pytest

from bloodcell_jax.metrics import binary_auc, classification_metrics, confusion_matrix


def test_metrics_by_hand():
  labels = np.array([0, 0, 0, 1, 1, 2])
  preds = np.array([0, 0, 1, 1, 2, 2])
  probs = np.eye(3)[preds] * 0.7 + 0.1
  m = classification_metrics(labels, probs)
  np.testing.assert_array_equal(confusion_matrix(labels, preds, 3), [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
  # recall (2/3, 1/2, 1), precision (1, 1/2, 1/2), f1 (0.8, 0.5, 2/3)
  assert m["accuracy"] == pytest.approx(4 / 6)
  assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
  assert m["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
  assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
  assert m["per_class_recall"] == {"0": pytest.approx(2 / 3), "1": 0.5, "2": 1.0}


def test_auc_matches_pairwise_definition_with_ties():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, 40).astype(float)  # many ties
  positive = rng.random(40) < 0.4
  pairs = list(itertools.product(scores[positive], scores[~positive]))
  expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
  assert binary_auc(positive, scores) == pytest.approx(expected)
  assert np.isnan(binary_auc(np.ones(3, bool), np.arange(3.0)))


def test_classes_absent_from_labels_do_not_count_in_macro_averages():
  labels = np.array([0, 0, 1, 1])
  probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.2, 0.3, 0.5]])
  m = classification_metrics(labels, probs)
  assert m["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
  assert set(m["per_class_recall"]) == {"0", "1"}
