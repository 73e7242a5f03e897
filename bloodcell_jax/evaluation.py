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
             desc: str = "eval") -> tuple[dict, dict]:
  """Metrics and outputs over every example of `data` (replicated model `variables`): the eval step's
  outputs ("probs", "tta_probs" or None, and "logits" and "features" where it returns them) as host
  arrays (trees of them) in the order of `data`."""
  results = []
  batches = pipeline.to_devices(pipeline.eval_batches(data, global_batch, num_devices, jax.process_index(),
                                                      jax.process_count()))
  total = -(-len(data) // global_batch)
  for batch in tqdm(batches, total=total, desc=desc, leave=False, disable=None):
    results.append(p_eval(variables, batch, class_weights))
  results = jax.device_get(results)
  names = results[0][1].keys() if results else ("probs", "tta_probs")
  outputs = {name: None if not results or results[0][1][name] is None else
             jax.tree.map(lambda *parts: np.concatenate([distributed.gather_examples(p) for p in parts])[:len(data)],
                          *[o[name] for _, o in results])
             for name in names}
  result = classification_metrics(data.labels, outputs["probs"]) if (data.labels >= 0).all() else {}
  loss_sum = sum(float(m["loss_sum"][0]) for m, _ in results)
  result["loss"] = loss_sum / max(sum(float(m["weight_sum"][0]) for m, _ in results), 1e-12)
  return result, outputs
