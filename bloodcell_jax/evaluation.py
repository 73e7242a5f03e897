"""Running the pmapped eval step over a whole data set: metrics, probabilities and test-time-augmented
probabilities, the same for validation during training and for a restored model's eval or predict."""

import jax
import numpy as np
from tqdm import tqdm

from bloodcell_jax import distributed
from bloodcell_jax.data import pipeline
from bloodcell_jax.data.sources import ImageSet
from bloodcell_jax.metrics import classification_metrics


def evaluate(p_eval, variables, data: ImageSet, class_weights, global_batch: int, num_devices: int,
             desc: str = "eval") -> tuple[dict, np.ndarray, np.ndarray | None]:
  """Metrics and probabilities over every example of `data` (replicated model `variables`), and the
  test-time-augmented probabilities where the eval step computes them (else None)."""
  outputs = []
  batches = pipeline.to_devices(pipeline.eval_batches(data, global_batch, num_devices, jax.process_index(),
                                                      jax.process_count()))
  total = -(-len(data) // global_batch)
  for batch in tqdm(batches, total=total, desc=desc, leave=False, disable=None):
    outputs.append(p_eval(variables, batch, class_weights))
  outputs = jax.device_get(outputs)
  probs = np.concatenate([distributed.gather_examples(p) for _, p, _ in outputs])[:len(data)]
  tta_probs = None
  if outputs and outputs[0][2] is not None:
    tta_probs = np.concatenate([distributed.gather_examples(t) for _, _, t in outputs])[:len(data)]
  result = classification_metrics(data.labels, probs) if (data.labels >= 0).all() else {}
  loss_sum = sum(float(m["loss_sum"][0]) for m, _, _ in outputs)
  result["loss"] = loss_sum / max(sum(float(m["weight_sum"][0]) for m, _, _ in outputs), 1e-12)
  return result, probs, tta_probs

