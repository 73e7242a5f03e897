"""Class-weighted softmax cross-entropy, soft-label ready, with label smoothing and an L2 term.

With class weights w_c and targets y (one-hot or soft, e.g. from MixUp), example i weighs
s_i = sum_c w_c y_ic and the batch loss is sum_i s_i CE_i / sum_i s_i (PyTorch's weighted mean,
so the loss stays on the same scale whatever the weights). Label smoothing changes the targets
inside CE_i but not the example weights. The L2 term lambda/2 * sum(theta^2) is the report's
explicit regulariser, separate from the optimiser's decoupled weight decay.
"""

import jax
import jax.numpy as jnp
import numpy as np

WEIGHTINGS = ("none", "balanced")


def class_weights(labels: np.ndarray, num_classes: int, mode) -> np.ndarray:
  """Weights per class: "none" (ones), "balanced" (N / (C * n_c)) or an explicit sequence.

  For "balanced", C counts the classes present in `labels`; absent classes get weight 0 (they
  have no examples to weigh).
  """
  if isinstance(mode, str):
    if mode == "none":
      return np.ones(num_classes, np.float32)
    if mode == "balanced":
      counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
      present = counts > 0
      weights = np.zeros(num_classes)
      weights[present] = len(labels) / (present.sum() * counts[present])
      return weights.astype(np.float32)
    raise ValueError(f"class_weights must be one of {WEIGHTINGS} or a list of {num_classes} numbers, got {mode!r}")
  weights = np.asarray(mode, np.float32)
  if weights.shape != (num_classes,) or np.any(weights < 0) or not np.all(np.isfinite(weights)):
    raise ValueError(f"class_weights list must hold {num_classes} non-negative numbers, got {list(mode)}")
  return weights


def weighted_cross_entropy_terms(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                                 label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Per-example (s_i * CE_i, s_i): sum each over the (global) batch and divide.

  Returned separately so that data-parallel steps can sum numerator and denominator across
  devices before dividing, which makes the loss independent of how the batch is split.
  `targets` are probabilities over classes (rows summing to 1).
  """
  example_weight = targets @ weights
  num_classes = logits.shape[-1]
  smoothed = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  ce = -jnp.sum(smoothed * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)
  return example_weight * ce, example_weight


def l2_penalty(params, mask) -> jax.Array:
  """0.5 * sum of squares over the leaves where `mask` is True (kernels, not norms or biases)."""
  leaves = jax.tree.leaves(jax.tree.map(lambda p, m: jnp.sum(jnp.square(p)) if m else 0.0, params, mask))
  return 0.5 * sum(leaves)
