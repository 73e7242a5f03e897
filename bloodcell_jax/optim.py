"""Optimiser, learning-rate schedule, weight-decay mask and freezing for transfer learning.

Default: optax.lion (b1 0.9, b2 0.99) with decoupled weight decay applied to kernels only (norm
scales, biases and layer scales are spared), after global-norm clipping, on a warmup + cosine
schedule. Frozen parameters get exactly zero updates through `optax.multi_transform`, so they
stay bit-identical.
"""

import re

import jax
import ml_collections
import optax

OPTIMIZERS = ("lion", "adamw", "sgd")
TRAINABLE = ("all", "head", "last_stages")
SCHEDULES = ("cosine", "constant")


def check(cfg: ml_collections.ConfigDict) -> None:
  """The optimiser section's rules; ValueError naming the field."""
  for field, value, allowed in (("name", cfg.name, OPTIMIZERS), ("trainable", cfg.trainable, TRAINABLE),
                                ("schedule", cfg.schedule, SCHEDULES)):
    if value not in allowed:
      raise ValueError(f"optim.{field}={value!r} is not one of {', '.join(allowed)}")
  if not 0.0 < cfg.layer_decay <= 1.0:
    raise ValueError(f"optim.layer_decay={cfg.layer_decay} must lie in (0, 1]")


def _top_name(path) -> str:
  return str(getattr(path[0], "key", path[0]))


def decay_mask(params):
  """True for parameters that weight decay and the L2 term apply to: 'kernel' leaves."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: str(getattr(path[-1], "key", "")) == "kernel", params)


# Top-level modules that come after the last stage: ConvNeXt's head_*, the EfficientNet family's
# feature head (conv_head, its BatchNorm bn2) and classifier.
_HEAD_MODULES = ("classifier", "conv_head", "bn2")
_STEM_MODULES = ("conv_stem", "bn1")


def _stage_of(top_name: str) -> int | None:
  """Stage of a top-level module: ConvNeXt's stages_<i>, the EfficientNet family's blocks_<i>_<j>."""
  match = re.fullmatch(r"stages_(\d+)|blocks_(\d+)_\d+", top_name)
  return int(match.group(1) or match.group(2)) if match else None


def _is_head(top_name: str) -> bool:
  return top_name.startswith("head") or top_name in _HEAD_MODULES


def trainable_mask(params, trainable: str, unfreeze_stages: int = 0):
  """True for parameters that train.

  "all": everything; "head": the modules after the last stage (ConvNeXt's head_*; the
  EfficientNet family's conv_head, bn2, classifier); "last_stages": the head plus the last
  `unfreeze_stages` stages (stem and earlier stages frozen).
  """
  stages = sorted({s for s in (_stage_of(k) for k in params) if s is not None})
  unfrozen = set(stages[len(stages) - unfreeze_stages:]) if unfreeze_stages > 0 else set()

  def is_trainable(path, _):
    top = _top_name(path)
    if trainable == "all" or _is_head(top):
      return True
    return trainable == "last_stages" and _stage_of(top) in unfrozen

  return jax.tree_util.tree_map_with_path(is_trainable, params)


def layer_index(path: str, depths: tuple[int, ...]) -> int:
  """Depth of a parameter for layer-wise decay: stem 0, blocks 1..L in order (a ConvNeXt stage's
  downsampling with its first block), head L + 1; parameters of other models count as the head."""
  match = re.match(r"stages_(\d+)/(?:blocks_(\d+)|downsample)|blocks_(\d+)_(\d+)/", path)
  if path.startswith("stem") or path.split("/")[0] in _STEM_MODULES:
    return 0
  if match:
    stage = int(match.group(1) or match.group(3))
    return 1 + sum(depths[:stage]) + int(match.group(2) or match.group(4) or 0)
  return sum(depths) + 1


def _blocks_per_stage(params) -> tuple[int, ...]:
  counts: dict[int, int] = {}
  for name in params:
    stage = _stage_of(name)
    if stage is not None:  # a ConvNeXt stage holds its blocks; an EfficientNet block is its own entry
      counts[stage] = counts.get(stage, 0) + (
          len([b for b in params[name] if b.startswith("blocks_")]) if name.startswith("stages_") else 1)
  return tuple(counts[s] for s in sorted(counts))


def layer_scales(params, decay: float):
  """decay^(L + 1 - layer) per parameter: 1 for the head, smallest for the stem."""
  depths = _blocks_per_stage(params)
  top = sum(depths) + 1
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decay ** (top - layer_index("/".join(str(getattr(p, "key", p)) for p in path), depths)),
      params)


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by a fixed per-parameter factor (layer-wise learning rates)."""
  return optax.GradientTransformation(
      lambda params: optax.EmptyState(),
      lambda updates, state, params=None: (jax.tree.map(lambda u, s: u * s, updates, scales), state))


def learning_rate_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
  total = max(1, steps_per_epoch * num_epochs)
  warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
  if cfg.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, max(warmup, 1)), optax.constant_schedule(cfg.learning_rate)],
        [warmup]) if warmup else optax.constant_schedule(cfg.learning_rate)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else cfg.learning_rate, peak_value=cfg.learning_rate,
      warmup_steps=warmup, decay_steps=total, end_value=cfg.learning_rate * cfg.min_lr_ratio)


def create_optimizer(cfg: ml_collections.ConfigDict, params, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optimiser of `cfg` (checked by `check`) for `params`, on `schedule`."""
  check(cfg)
  if cfg.name == "lion":
    inner = optax.lion(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask)
  elif cfg.name == "adamw":
    inner = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask)
  else:  # sgd
    inner = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
                        optax.sgd(schedule, momentum=cfg.momentum, nesterov=True))
  if cfg.grad_clip_norm:
    inner = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), inner)
  labels = jax.tree.map(lambda t: "train" if t else "freeze",
                        trainable_mask(params, cfg.trainable, cfg.unfreeze_stages))
  tx = optax.multi_transform({"train": inner, "freeze": optax.set_to_zero()}, labels)
  if cfg.layer_decay < 1.0:
    return optax.chain(tx, scale_by_tree(layer_scales(params, cfg.layer_decay)))
  return tx
