"""Where the input pipeline stands within an epoch, and what that epoch has accumulated so far.

Saved with every checkpoint so that a run stopped mid-epoch resumes at the next batch of the same
permutation and still reports the whole epoch's training metrics, exactly as an uninterrupted run.
Buffers have the epoch's full size (Orbax cannot save empty arrays); `offset` says how much is filled.
"""

import dataclasses

import numpy as np

from bloodcell_jax.data import pipeline
from bloodcell_jax.metrics import classification_metrics


@dataclasses.dataclass
class EpochProgress:
  epoch: int
  offset: int  # batches of this epoch already trained
  global_batch: int
  permutation: np.ndarray  # the epoch's example order (a function of seed and epoch)
  probs: np.ndarray  # (steps * batch, classes) softmax outputs of the batches trained so far
  labels: np.ndarray  # (steps * batch,)
  loss_sum: float  # sum of weighted cross-entropies so far
  weight_sum: float  # sum of example weights so far

  @classmethod
  def start(cls, epoch: int, seed: int, num_examples: int, global_batch: int, num_classes: int) -> "EpochProgress":
    size = pipeline.steps_per_epoch(num_examples, global_batch) * global_batch
    return cls(epoch, 0, global_batch, pipeline.epoch_permutation(seed, epoch, num_examples),
               np.zeros((size, num_classes), np.float32), np.zeros(size, np.int32), 0.0, 0.0)

  def absorb(self, fetched: list) -> list[int]:
    """Adds host copies of (metrics, probs, labels) of the next batches, in order.

    Returns the offsets (within the epoch) of steps whose loss or gradient was not finite; such
    steps add nothing to the loss and count as uniform predictions.
    """
    nonfinite = []
    for metrics, probs, labels in fetched:
      start = self.offset * self.global_batch
      probs = np.asarray(probs).reshape(self.global_batch, -1)
      if bool(metrics["finite"][0]):
        self.loss_sum += float(metrics["loss_sum"][0])
        self.weight_sum += float(metrics["weight_sum"][0])
      else:
        nonfinite.append(self.offset)
        probs = np.full_like(probs, 1.0 / probs.shape[1])
      self.probs[start:start + self.global_batch] = probs
      self.labels[start:start + self.global_batch] = np.asarray(labels).reshape(-1)
      self.offset += 1
    return nonfinite

  def metrics(self) -> dict:
    filled = self.offset * self.global_batch
    result = classification_metrics(self.labels[:filled], self.probs[:filled])
    result["loss"] = self.loss_sum / max(self.weight_sum, 1e-12)
    return result

  def to_tree(self) -> dict:
    return {"epoch": np.int64(self.epoch), "offset": np.int64(self.offset),
            "global_batch": np.int64(self.global_batch), "permutation": self.permutation,
            "probs": self.probs, "labels": self.labels, "loss_sum": np.float64(self.loss_sum),
            "weight_sum": np.float64(self.weight_sum)}

  @classmethod
  def from_tree(cls, tree: dict) -> "EpochProgress":
    return cls(int(tree["epoch"]), int(tree["offset"]), int(tree["global_batch"]), np.asarray(tree["permutation"]),
               np.asarray(tree["probs"], np.float32), np.asarray(tree["labels"], np.int32),
               float(tree["loss_sum"]), float(tree["weight_sum"]))
