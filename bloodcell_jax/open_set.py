"""Open-set rejection: a score that says how unlike the training cells an image is, and the
threshold above which the model answers "not one of mine".

The score looks at every stage of the network (taps.stage_statistics: each channel's mean and
standard deviation over the image): early stages see colour and texture (a blank frame, a
photograph, a picture blended over a cell), late ones the cell's shape (another magnification).
Per stage, a distance to the training cells; each is centred and scaled by its spread on held-out
real cells, and the sum is the score (higher: less like the training data). Methods (compared on
real data in docs/results.md, "Open-set rejection"):
- `mahalanobis`: the smallest Mahalanobis distance to a class mean, with one covariance shared by
  the classes (Lee et al. 2018), on unit-length features, shrunk towards a scaled identity so it
  stays invertible with few images;
- `knn`: one minus the cosine similarity to the k-th nearest training feature (Sun et al. 2022),
  by the same search the data-cleaning tool uses (neighbours.py);
- `energy`: -logsumexp(logits) (Liu et al. 2020) and `max_probability`: one minus the top softmax
  probability (Hendrycks & Gimpel 2017), from the logits alone, the baselines.
The threshold is the (1 - target) quantile of the scores of held-out real cells, so about
`target` of real cells are rejected. Scoring is written in jax.numpy so that the exported model
computes it in its own graph.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from bloodcell_jax.neighbours import top_k_similar

METHODS = ("mahalanobis", "knn", "energy", "max_probability")
SHRINKAGE = 0.1  # share of the scaled identity mixed into the shared covariance
KNN_K = 10
KNN_BANK = 4096  # training features kept for `knn` (a fixed random subset beyond that)


@dataclasses.dataclass(frozen=True)
class Rejector:
  method: str
  arrays: dict  # what `score` needs: per stage i "means_i" and "precision_i" or "bank_i"; "centre", "scale"
  threshold: float
  target_false_rejection: float


def check_method(method: str) -> str:
  if method not in METHODS:
    raise ValueError(f"unknown rejection method {method!r}; choose from {', '.join(METHODS)}")
  return method


def _unit(features):
  return features / (jnp.linalg.norm(features, axis=-1, keepdims=True) + 1e-6)


def _block_arrays(method: str, features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int) -> dict:
  features = np.asarray(_unit(np.asarray(features, np.float32)), np.float64)
  if method == "mahalanobis":
    means = np.stack([features[labels == c].mean(0) if (labels == c).any() else np.zeros(features.shape[1])
                      for c in range(num_classes)])
    centred = features - means[labels]
    covariance = centred.T @ centred / max(len(features) - 1, 1)
    scale = np.trace(covariance) / covariance.shape[0]
    covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * scale * np.eye(covariance.shape[0])
    return {"means": means.astype(np.float32), "precision": np.linalg.inv(covariance).astype(np.float32)}
  chosen = np.arange(len(features))
  if len(chosen) > KNN_BANK:
    chosen = np.sort(np.random.default_rng(seed).choice(len(chosen), KNN_BANK, replace=False))
  return {"bank": features[chosen].astype(np.float32)}


def _block_distance(method: str, arrays: dict, i: int, features: jax.Array) -> jax.Array:
  features = _unit(features)
  if method == "mahalanobis":
    diff = features[:, None, :] - arrays[f"means_{i}"][None]  # (B, C, D)
    return jnp.einsum("bcd,de,bce->bc", diff, arrays[f"precision_{i}"], diff).min(-1)
  bank = arrays[f"bank_{i}"]
  return 1.0 - top_k_similar(features, bank, min(KNN_K, bank.shape[0]))[0][:, -1]


def _block_distances(method: str, arrays: dict, blocks, logits: jax.Array) -> jax.Array:
  """(B, stages) raw distances for the feature-based methods, (B, 1) scores for the others."""
  if method == "energy":
    return -jax.nn.logsumexp(logits, axis=-1)[:, None]
  if method == "max_probability":
    return 1.0 - jax.nn.softmax(logits).max(-1)[:, None]
  return jnp.stack([_block_distance(method, arrays, i, b) for i, b in enumerate(blocks)], -1)


def score(method: str, arrays: dict, blocks, logits: jax.Array) -> jax.Array:
  """(B,) scores for per-stage features `blocks` (a sequence of (B, D_i)) and logits (B, classes);
  jittable; higher = less like a training cell."""
  check_method(method)
  distances = _block_distances(method, arrays, blocks, logits)
  return ((distances - arrays["centre"]) / arrays["scale"]).sum(-1)


def _on_host(function, method: str, arrays: dict, blocks, logits, chunk: int = 512) -> np.ndarray:
  jitted = jax.jit(function, static_argnums=0)
  out = [np.asarray(jitted(method, arrays, [b[i:i + chunk] for b in blocks], logits[i:i + chunk]))
         for i in range(0, len(logits), chunk)]
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


def scores(method: str, arrays: dict, blocks, logits: np.ndarray) -> np.ndarray:
  """`score` over many examples on the host, in chunks."""
  return _on_host(score, method, arrays, blocks, logits)


def threshold_for(held_out_scores: np.ndarray, target_false_rejection: float) -> float:
  """The score above which `target_false_rejection` of held-out real cells lie."""
  if not 0.0 < target_false_rejection < 1.0:
    raise ValueError(f"target false-rejection rate {target_false_rejection} must lie in (0, 1)")
  return float(np.quantile(np.asarray(held_out_scores, np.float64), 1.0 - target_false_rejection))


def fit(method: str, train_blocks, train_labels, num_classes: int, held_out_blocks, held_out_logits,
        target_false_rejection: float, seed: int = 0) -> Rejector:
  """Statistics of each stage from the training features; the stages' centre and spread, and the
  threshold, from held-out real cells."""
  check_method(method)
  train_labels = np.asarray(train_labels)
  arrays = {}
  if method in ("mahalanobis", "knn"):
    for i, block in enumerate(train_blocks):
      arrays.update({f"{name}_{i}": a for name, a in _block_arrays(method, block, train_labels, num_classes,
                                                                    seed).items()})
  distances = _on_host(_block_distances, method, arrays, held_out_blocks, held_out_logits)
  arrays["centre"] = np.median(distances, 0).astype(np.float32)
  arrays["scale"] = np.maximum(distances.std(0), 1e-6).astype(np.float32)
  threshold = threshold_for(scores(method, arrays, held_out_blocks, held_out_logits), target_false_rejection)
  return Rejector(method, arrays, threshold, target_false_rejection)
