import math

import jax.numpy as jnp
import numpy as np
import pytest

from bloodcell_jax.losses import class_weights, l2_penalty, weighted_cross_entropy_terms


def test_balanced_weights_by_hand():
  labels = np.array([0, 0, 0, 1])  # N=4, C present=2: w0 = 4/(2*3), w1 = 4/(2*1)
  w = class_weights(labels, 3, "balanced")
  np.testing.assert_allclose(w, [2 / 3, 2.0, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(class_weights(labels, 3, "none"), [1, 1, 1])
  np.testing.assert_array_equal(class_weights(labels, 3, [1, 2, 3]), [1, 2, 3])
  with pytest.raises(ValueError, match="3 non-negative"):
    class_weights(labels, 3, [1, 2])
  with pytest.raises(ValueError, match="balanced"):
    class_weights(labels, 3, "inverse")


def _ce(logits, label):
  return -(logits[label] - math.log(sum(math.exp(v) for v in logits)))


def test_weighted_cross_entropy_by_hand():
  logits = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
  labels = [0, 2]
  weights = [1.0, 1.0, 3.0]
  wce, w = weighted_cross_entropy_terms(jnp.array(logits), jnp.eye(3)[jnp.array(labels)], jnp.array(weights))
  expected = (1.0 * _ce(logits[0], 0) + 3.0 * _ce(logits[1], 2)) / 4.0
  assert float(wce.sum() / w.sum()) == pytest.approx(expected, rel=1e-6)


def test_soft_labels_and_label_smoothing_by_hand():
  logits = jnp.array([[1.0, 2.0]])
  soft = jnp.array([[0.25, 0.75]])
  wce, w = weighted_cross_entropy_terms(logits, soft, jnp.array([2.0, 4.0]), label_smoothing=0.2)
  # example weight 0.25*2 + 0.75*4 = 3.5; smoothed target 0.8*soft + 0.1 = (0.3, 0.7)
  ce = -(0.3 * (1.0 - math.log(math.e + math.e ** 2)) + 0.7 * (2.0 - math.log(math.e + math.e ** 2)))
  assert float(w[0]) == pytest.approx(3.5)
  assert float(wce[0]) == pytest.approx(3.5 * ce, rel=1e-6)


def test_l2_penalty_counts_masked_leaves_only():
  params = {"kernel": jnp.array([1.0, 2.0]), "bias": jnp.array([10.0])}
  assert float(l2_penalty(params, {"kernel": True, "bias": False})) == pytest.approx(2.5)
