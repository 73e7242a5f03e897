"""`--mode=export`: a trained checkpoint as serialized StableHLO (`jax.export`) that runs without
the training code.

The exported function maps (weights, uint8 images of any batch size) to (class probabilities,
rejection scores), with the input normalisation, the test-time views, the fitted temperature and
the open-set rejector's score (trust.py) inside it; the weights (the model's, then the rejector's
statistics) travel beside it as an npz (so the StableHLO stays small and compiles quickly). `model.json` names the classes, the input
size and where the model came from; `load_model.py` (a copy of bloodcell_jax/exported_model.py)
loads and runs it with jax and numpy only.
"""

import functools
import hashlib
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bloodcell_jax import calibration, checkpointing, open_set, trust, tta
from bloodcell_jax.atomic_files import write_json_atomic
from bloodcell_jax.classes import CLASS_NAMES, NUM_CLASSES
from bloodcell_jax.config import load_run_config, resolve_tta, served_weights
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.models import create_model
from bloodcell_jax.steps import apply_with_features, normalize

PLATFORMS = ("cpu", "cuda", "tpu")
FUNCTION_FILE, WEIGHTS_FILE, META_FILE, LOADER_FILE = "model.jax_export", "weights.npz", "model.json", "load_model.py"


def probability_function(model, treedef, mean, std, tta_name: str, fitted: trust.Trust | None = None):
  """(weights, uint8 images) -> (probabilities as predict shows them, rejection scores); `weights` is
  the list of the model's variables then the rejector's arrays (`export_weights`)."""
  num_model = treedef.num_leaves
  names = sorted(fitted.rejector.arrays) if fitted else []
  temperature = fitted.temperature(tta_name) if fitted else None

  def probabilities(weights: list, images: jax.Array):
    variables = jax.tree.unflatten(treedef, weights[:num_model])
    x = normalize(images, mean, std)
    logits, _, averaged, features = tta.probabilities(functools.partial(apply_with_features, model, variables), x,
                                                      tta_name)
    if temperature is not None:  # calibration.apply_temperature, in the graph
      averaged = jax.nn.softmax(jnp.log(jnp.maximum(averaged, calibration.FLOOR)) / temperature)
    if fitted is None:
      scores = jnp.zeros(images.shape[:1], jnp.float32)
    else:
      arrays = dict(zip(names, weights[num_model:]))
      scores = open_set.score(fitted.rejector.method, arrays, features, logits)
    return averaged.astype(jnp.float32), scores.astype(jnp.float32)

  return probabilities


def export_weights(variables, fitted: trust.Trust | None) -> tuple[list[np.ndarray], object]:
  """The function's weight list (model variables, then the rejector's arrays by name) and the model's treedef."""
  leaves, treedef = jax.tree.flatten(variables)
  weights = [np.asarray(w) for w in leaves]
  if fitted is not None:
    weights += [np.asarray(fitted.rejector.arrays[name]) for name in sorted(fitted.rejector.arrays)]
  return weights, treedef


def export_checkpoint(config, variables, tta_name: str, fitted: trust.Trust | None = None,
                      platforms=PLATFORMS) -> tuple[bytes, list[np.ndarray]]:
  """The serialized function (batch dimension symbolic) and its weight arrays in argument order;
  `variables` as `model.apply` takes them ({"params": ..., "batch_stats": ...})."""
  model = create_model(config.model, NUM_CLASSES)
  weights, treedef = export_weights(variables, fitted)
  function = probability_function(model, treedef, tuple(config.data.mean), tuple(config.data.std), tta_name, fitted)
  size = config.data.image_size
  (batch,) = jax.export.symbolic_shape("batch")
  args = ([jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights],
          jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8))
  exported = jax.export.export(jax.jit(function), platforms=platforms)(*args)
  return bytes(exported.serialize()), weights


def _check_round_trip(serialized: bytes, weights: list, config, variables, tta_name: str,
                      fitted: trust.Trust | None) -> float:
  """Largest difference between the deserialized function and the model applied directly."""
  images = np.random.default_rng(0).integers(0, 256, (3, config.data.image_size, config.data.image_size, 3),
                                             dtype=np.uint8)
  restored = jax.export.deserialize(bytearray(serialized))
  direct = probability_function(create_model(config.model, NUM_CLASSES), jax.tree.structure(variables),
                                tuple(config.data.mean), tuple(config.data.std), tta_name, fitted)
  got, expected = restored.call(weights, images), jax.jit(direct)(weights, images)
  return max(float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(1.0, float(np.abs(np.asarray(b)).max())))
             for a, b in zip(got, expected))


def write_export(output: str, config, variables, tta_name: str, fitted: trust.Trust | None, platforms=PLATFORMS,
                 source: dict | None = None) -> float:
  """Writes the export directory `output` from a model's variables (checked against the model first;
  staged, then renamed into place); returns the round-trip difference."""
  serialized, weights = export_checkpoint(config, variables, tta_name, fitted, platforms)
  difference = _check_round_trip(serialized, weights, config, variables, tta_name, fitted)
  if difference > 1e-5:
    raise RuntimeError(f"exported function differs from the model by {difference:.2e}; not written")
  digest = hashlib.sha256()
  for w in weights:
    digest.update(np.ascontiguousarray(w).tobytes())
  staging = f"{output}.tmp-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  with open(os.path.join(staging, FUNCTION_FILE), "wb") as f:
    f.write(serialized)
  np.savez(os.path.join(staging, WEIGHTS_FILE), **{f"w{i:04d}": w for i, w in enumerate(weights)})
  shutil.copyfile(os.path.join(os.path.dirname(__file__), "exported_model.py"), os.path.join(staging, LOADER_FILE))
  write_json_atomic(os.path.join(staging, META_FILE), {
      "function_file": FUNCTION_FILE, "weights_file": WEIGHTS_FILE, "class_names": list(CLASS_NAMES),
      "image_size": config.data.image_size, "batch_size": config.train.batch_size,
      "input": "uint8 RGB images (batch, image_size, image_size, 3), any batch size",
      "output": "(float32 class probabilities (batch, classes), float32 rejection scores (batch,))",
      "temperature": fitted.temperature(tta_name) if fitted else None,
      "rejection": None if fitted is None else {
          "method": fitted.rejector.method, "threshold": fitted.rejector.threshold,
          "min_confidence": fitted.min_confidence, "target_false_rejection": fitted.rejector.target_false_rejection,
          "rule": "rejected as 'not a cell' when score > threshold, else as 'low confidence' when the top "
                  "probability < min_confidence"},
      "normalisation": {"mean": list(config.data.mean), "std": list(config.data.std), "applied_inside": True},
      "tta": tta_name, "platforms": list(platforms), "model": config.model.to_dict(), **(source or {}),
      "weights_sha256": digest.hexdigest(), "jax_version": jax.__version__})
  if os.path.exists(output):
    shutil.rmtree(output)
  os.rename(staging, output)
  return difference


def run_export(workdir: str, output: str, checkpoint: str = "best", tta_flag: str | None = None) -> str:
  """Writes the export directory `output` (replacing an earlier export there, never anything else)."""
  config = load_run_config(workdir)
  tta_name = resolve_tta(config, tta_flag)
  output = os.path.abspath(output)
  if os.path.exists(output) and not os.path.exists(os.path.join(output, META_FILE)):
    raise UserInputError(f"{output}: exists and is not an earlier export; choose another --output")
  try:
    variables, step = checkpointing.restore_variables(workdir, checkpoint)
    fitted = trust.load(workdir, step, trust.weights_fingerprint(variables))
  except FileNotFoundError as e:
    raise UserInputError(str(e)) from None
  except checkpointing.Damaged as e:
    raise UserInputError(f"{e}; refit it with --mode=calibrate --checkpoint={step}") from None
  if fitted is None:
    logging.warning("no temperature or rejector fitted for step %d: the export's probabilities are not calibrated "
                    "and it rejects nothing (--mode=calibrate --checkpoint=%d fits them)", step, step)
  difference = write_export(output, config, variables, tta_name, fitted, platforms=PLATFORMS,
                            source={"run": os.path.abspath(workdir), "checkpoint": checkpoint, "step": step,
                                    "weights": served_weights(config)})
  print(f"exported the '{checkpoint}' checkpoint (step {step}) of {workdir} to {output} "
        f"(test-time augmentation: {tta_name}; round-trip difference {difference:.1e}); run it with "
        f"python {os.path.join(output, LOADER_FILE)} IMAGE...")
  return output
