"""Starting a run from ported weights: the config takes the weights' architecture and input
normalisation, the backbone (and the head's LayerNorm) load, and the classifier is a fresh
8-class layer unless `model.keep_head` asks for the checkpoint's own (only when it has 8 classes).
"""

from absl import logging

from bloodcell_jax.classes import NUM_CLASSES
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.pretrained import store


def apply_to_config(config) -> dict | None:
  """Sets model depths/dims/variant and data mean/std from `model.init_from`; returns its metadata."""
  source = config.model.get("init_from", "")
  if not source:
    return None
  if config.model.name != "convnext":
    raise UserInputError(f"config: model.init_from holds ConvNeXt weights but model.name={config.model.name!r}")
  directory = store.resolve(source)
  meta = store.read_meta(directory)
  config.model.init_from = directory
  config.model.variant = meta["variant"] if meta["variant"] != "custom" else config.model.variant
  config.model.depths = tuple(meta["depths"])
  config.model.dims = tuple(meta["dims"])
  config.data.mean = tuple(meta["mean"])
  config.data.std = tuple(meta["std"])
  if config.model.get("keep_head", False) and meta["num_classes"] != NUM_CLASSES:
    raise UserInputError(f"config: model.keep_head needs a {NUM_CLASSES}-class head; {directory} has "
                         f"{meta['num_classes']} classes")
  logging.info("starting from %s (%s, ConvNeXt depths %s dims %s); input mean %s std %s", directory, meta["source"],
               meta["depths"], meta["dims"], meta["mean"], meta["std"])
  return meta


def merge_into(params: dict, config) -> dict:
  """`params` (freshly initialised) with every pretrained tensor copied in except, by default, head_fc."""
  pretrained, _ = store.load(config.model.init_from)
  keep_head = config.model.get("keep_head", False)
  merged = dict(params)
  for name, value in pretrained.items():
    if name == "head_fc" and not keep_head:
      continue
    merged[name] = value
  return merged
