"""Temperature scaling (Guo et al. 2017): one number T, fitted on held-out labelled data after
training, that makes the predicted probabilities mean what they say without changing any decision.

It acts on the probabilities a run reports (plain or averaged over test-time views):
calibrated = softmax(log p / T). For plain predictions this is exactly softmax(logits / T); for
test-time-averaged ones it calibrates the averaged distribution, which is what predict shows.
T > 1 softens over-confident models, T < 1 sharpens under-confident ones.
"""

import numpy as np

LOG_T_RANGE = (-3.0, 3.0)  # T from 0.05 to 20: beyond either end the model's probabilities carry no signal
FLOOR = 1e-30  # probabilities below it count as it (float32 represents it; its log is finite)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
  """softmax(log(probs) / T), row by row; T = 1 returns the probabilities renormalised."""
  log_p = np.log(np.maximum(np.asarray(probs, np.float64), FLOOR)) / temperature
  log_p -= log_p.max(-1, keepdims=True)
  p = np.exp(log_p)
  return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
  """Mean -log p[label] after temperature scaling."""
  calibrated = apply_temperature(probs, temperature)
  return float(-np.mean(np.log(np.maximum(calibrated[np.arange(len(labels)), labels], FLOOR))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, iterations: int = 60) -> float:
  """The T that minimises the negative log-likelihood of `labels`: golden-section search on log T
  (the NLL is convex in 1/T, so unimodal in log T)."""
  probs, labels = np.asarray(probs), np.asarray(labels)
  if len(labels) == 0 or (labels < 0).any():
    raise ValueError("temperature scaling needs labelled examples")
  lo, hi = LOG_T_RANGE
  ratio = (np.sqrt(5.0) - 1) / 2
  a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
  fa, fb = (negative_log_likelihood(probs, labels, np.exp(x)) for x in (a, b))
  for _ in range(iterations):
    if fa <= fb:
      hi, b, fb = b, a, fa
      a = hi - ratio * (hi - lo)
      fa = negative_log_likelihood(probs, labels, np.exp(a))
    else:
      lo, a, fa = a, b, fb
      b = lo + ratio * (hi - lo)
      fb = negative_log_likelihood(probs, labels, np.exp(b))
  return float(np.exp((lo + hi) / 2))
