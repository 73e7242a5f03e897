"""`--mode=export`: a trained checkpoint as serialized StableHLO (`jax.export`) that runs without
the training code.

The exported function maps (weights, uint8 images of any batch size) to class probabilities, with
the input normalisation and the test-time views inside it; the weights travel beside it as an npz
(so the StableHLO stays small and compiles quickly). `model.json` names the classes, the input
size and where the model came from; `load_model.py` (a copy of bloodcell_jax/exported_model.py)
loads and runs it with jax and numpy only.
"""

import hashlib
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from bloodcell_jax import checkpointing, tta
from bloodcell_jax.atomic_files import write_json_atomic
from bloodcell_jax.classes import CLASS_NAMES, NUM_CLASSES
from bloodcell_jax.config import load_run_config, resolve_tta
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.models import create_model
from bloodcell_jax.steps import normalize

PLATFORMS = ("cpu", "cuda", "tpu")
FUNCTION_FILE, WEIGHTS_FILE, META_FILE, LOADER_FILE = "model.jax_export", "weights.npz", "model.json", "load_model.py"


def probability_function(model, treedef, mean, std, tta_name: str):
  """(list of weight arrays, uint8 images) -> probabilities, as `--mode=eval` computes them."""

  def probabilities(weights: list, images: jax.Array) -> jax.Array:
    variables = jax.tree.unflatten(treedef, weights)
    x = normalize(images, mean, std)
    _, _, averaged = tta.probabilities(lambda v: model.apply(variables, v, train=False), x, tta_name)
    return averaged.astype(jnp.float32)

  return probabilities


def export_checkpoint(config, variables, tta_name: str, platforms=PLATFORMS) -> tuple[bytes, list[np.ndarray]]:
  """The serialized function (batch dimension symbolic) and its weight arrays in argument order;
  `variables` as `model.apply` takes them ({"params": ..., "batch_stats": ...})."""
  model = create_model(config.model, NUM_CLASSES)
  weights, treedef = jax.tree.flatten(variables)
  weights = [np.asarray(w) for w in weights]
  function = probability_function(model, treedef, tuple(config.data.mean), tuple(config.data.std), tta_name)
  size = config.data.image_size
  (batch,) = jax.export.symbolic_shape("batch")
  args = ([jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights],
          jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8))
  exported = jax.export.export(jax.jit(function), platforms=platforms)(*args)
  return bytes(exported.serialize()), weights


def _check_round_trip(serialized: bytes, weights: list, config, variables, tta_name: str) -> float:
  """Largest difference between the deserialized function and the model applied directly."""
  images = np.random.default_rng(0).integers(0, 256, (3, config.data.image_size, config.data.image_size, 3),
                                             dtype=np.uint8)
  restored = jax.export.deserialize(bytearray(serialized))
  direct = probability_function(create_model(config.model, NUM_CLASSES), jax.tree.structure(variables),
                                tuple(config.data.mean), tuple(config.data.std), tta_name)
  return float(np.abs(np.asarray(restored.call(weights, images)) - np.asarray(jax.jit(direct)(weights, images))).max())


def run_export(workdir: str, output: str, checkpoint: str = "best", tta_flag: str | None = None) -> str:
  """Writes the export directory `output` (replacing an earlier export there, never anything else)."""
  config = load_run_config(workdir)
  tta_name = resolve_tta(config, tta_flag)
  output = os.path.abspath(output)
  if os.path.exists(output) and not os.path.exists(os.path.join(output, META_FILE)):
    raise UserInputError(f"{output}: exists and is not an earlier export; choose another --output")
  try:
    variables, step = checkpointing.restore_variables(workdir, checkpoint)
  except FileNotFoundError as e:
    raise UserInputError(str(e)) from None
  serialized, weights = export_checkpoint(config, variables, tta_name)
  difference = _check_round_trip(serialized, weights, config, variables, tta_name)
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
      "output": "float32 class probabilities (batch, classes)",
      "normalisation": {"mean": list(config.data.mean), "std": list(config.data.std), "applied_inside": True},
      "tta": tta_name, "platforms": list(PLATFORMS), "model": config.model.to_dict(),
      "run": os.path.abspath(workdir), "checkpoint": checkpoint, "step": step,
      "weights_sha256": digest.hexdigest(), "jax_version": jax.__version__})
  if os.path.exists(output):
    shutil.rmtree(output)
  os.rename(staging, output)
  print(f"exported the '{checkpoint}' checkpoint (step {step}) of {workdir} to {output} "
        f"(test-time augmentation: {tta_name}; round-trip difference {difference:.1e}); run it with "
        f"python {os.path.join(output, LOADER_FILE)} IMAGE...")
  return output
