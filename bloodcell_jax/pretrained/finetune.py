"""Starting a run from ported weights: the config takes the weights' architecture and input
normalisation, the backbone (with the head's LayerNorm, or BatchNorm statistics) loads, and the
classifier is a fresh 8-class layer unless `model.keep_head` asks for the checkpoint's own (only
when it has 8 classes). Weights installed as a pip package are ported on first use.
"""

from absl import logging

from bloodcell_jax.classes import NUM_CLASSES
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.pretrained import readers, store
from bloodcell_jax.pretrained.port import port


def _ported(source: str) -> str:
  """The directory of ported weights `source`; packaged weights are ported there the first time."""
  try:
    return store.resolve(source)
  except UserInputError:
    if source not in readers.PACKAGED:
      raise
  try:
    port(source, out=store.DEFAULT_ROOT)
  except UserInputError:
    pass  # another process ported them meanwhile; resolve says whether it did
  return store.resolve(source)


def apply_to_config(config) -> dict | None:
  """Sets model depths/dims/variant and data mean/std from `model.init_from`; returns its metadata."""
  source = config.model.init_from
  if not source:
    return None
  directory = _ported(source)
  meta = store.read_meta(directory)
  family = meta.get("family", "convnext")
  if config.model.name != family:
    raise UserInputError(f"config: model.init_from holds {family} weights but model.name={config.model.name!r}")
  config.model.init_from = directory
  config.model.variant = meta["variant"] if meta["variant"] != "custom" else config.model.variant
  if family == "convnext":
    config.model.depths = tuple(meta["depths"])
    config.model.dims = tuple(meta["dims"])
  config.data.mean = tuple(meta["mean"])
  config.data.std = tuple(meta["std"])
  if config.model.keep_head and meta["num_classes"] != NUM_CLASSES:
    raise UserInputError(f"config: model.keep_head needs a {NUM_CLASSES}-class head; {directory} has "
                         f"{meta['num_classes']} classes")
  logging.info("starting from %s (%s, %s %s); input mean %s std %s", directory, meta["source"], family,
               meta["variant"], meta["mean"], meta["std"])
  return meta


HEADS = ("head_fc", "classifier")  # ConvNeXt's, and the EfficientNet family's, final linear layer


def merge_into(params: dict, model_state: dict, config) -> tuple[dict, dict]:
  """(params, model_state) freshly initialised, with every pretrained tensor copied in except, by
  default, the classifier."""
  variables, _ = store.load_variables(config.model.init_from)
  keep_head = config.model.keep_head
  merged = dict(params)
  for name, value in variables["params"].items():
    if name in HEADS and not keep_head:
      continue
    merged[name] = value
  state = {k: variables.get(k, v) for k, v in model_state.items()}
  return merged, state
