"""A run's config: resolved once, checked once, read back from a run directory the same way.

Every mode calls one of two entry points once: `resolve(config)` for a config file given on the
command line (train, benchmark, preview) and `load_run_config(workdir)` for a trained run (eval,
predict, export). Both lay the config over `defaults.get_config()`, so every field exists and the
rest of the code reads `config.x.y` without fallbacks, and both `validate` it. The rule for each
value lives in the module that owns the value (the augment parser, the model registry, the
optimiser, ...): `validate` calls it and names the config field in the one-line error.
"""

import json
import os
from collections.abc import Callable, Mapping

import ml_collections

from bloodcell_jax import ema, open_set, optim, pretrained, tta
from bloodcell_jax.augment import parse as parse_policy
from bloodcell_jax.augment.sampling import check_fill_mode
from bloodcell_jax.classes import NUM_CLASSES
from bloodcell_jax.config.defaults import get_config as default_config
from bloodcell_jax.data.split import check_val_fraction
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.metrics import MONITORED
from bloodcell_jax.models import create_model
from bloodcell_jax.models import depthwise, matmul
from bloodcell_jax.steps import StepConfig

CONFIG_FILE = "config.json"


def upgrade(values: Mapping, source: str = "config") -> ml_collections.ConfigDict:
  """`values` laid over today's defaults: fields added since a run was recorded take their default.

  Fields the defaults no longer have are kept (a run's record stays complete); a value of the wrong
  type is an error naming `source`.
  """
  config = default_config()
  try:
    config.update(values)
  except (TypeError, ValueError) as e:
    raise UserInputError(f"{source}: {e}") from None
  return config


def _check(field: str, rule: Callable, value, separator: str = "=") -> None:
  """`rule(value)`; its ValueError as `config: field=<message>` (messages that start with the value)
  or, with separator ": ", `config: field: <message>` (a parser's own sentence)."""
  try:
    rule(value)
  except ValueError as e:
    raise UserInputError(f"config: {field}{separator}{e}") from None


def _one_of(allowed) -> Callable:
  def rule(value):
    if value not in allowed:
      raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
  return rule


def _within(low: float, high: float, closed: bool = True) -> Callable:
  def rule(value):
    inside = low <= value < high if closed else low < value <= high
    if not inside:
      raise ValueError(f"{value} must lie in {'[' if closed else '('}{low}, {high}{')' if closed else ']'}")
  return rule


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects values that would otherwise fail deep inside tracing, naming the field."""
  _check("data.fill_mode", check_fill_mode, config.data.fill_mode)
  _check("data.augment", parse_policy, config.data.augment, ": ")
  _check("data.val_fraction", check_val_fraction, config.data.val_fraction)
  if config.data.image_size < 32:
    raise UserInputError(f"config: data.image_size={config.data.image_size} is below the minimum of 32")
  _check("model.depthwise_impl", _one_of(depthwise.IMPLEMENTATIONS), config.model.depthwise_impl)
  _check("model.matmul_impl", _one_of(matmul.IMPLEMENTATIONS), config.model.matmul_impl)
  try:
    optim.check(config.optim)
  except ValueError as e:
    raise UserInputError(f"config: {e}") from None
  _check("train.monitor_metric", _one_of(MONITORED), config.train.monitor_metric)
  if config.train.num_epochs < 1:
    raise UserInputError(f"config: train.num_epochs={config.train.num_epochs} must be at least 1")
  _check("ema.decay", ema.check_decay, config.ema.decay)
  _check("ema.warmup_power", ema.check_warmup_power, config.ema.warmup_power)
  _check("ema.weights", _one_of(ema.WEIGHTS), config.ema.weights)
  if config.checkpoint.every_steps < 0 or config.checkpoint.keep < 1:
    raise UserInputError("config: checkpoint.every_steps must be >= 0 and checkpoint.keep >= 1")
  _check("eval.tta", tta.check, config.eval.tta, ": ")
  _check("reject.method", open_set.check_method, config.reject.method, ": ")
  _check("reject.false_rejection", _within(0.0, 0.5, closed=False), config.reject.false_rejection)
  _check("reject.min_confidence", _within(0.0, 1.0), config.reject.min_confidence)
  try:
    create_model(config.model, NUM_CLASSES)
  except ValueError as e:
    raise UserInputError(f"config: {e}") from None


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a run uses: over the defaults, with the architecture and input normalisation of
  ported weights (`model.init_from`), validated. `config` itself is left as it is."""
  resolved = upgrade(config.to_dict())
  pretrained.apply_to_config(resolved)
  validate(resolved)
  return resolved


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run directory recorded, upgraded to today's fields and validated."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise UserInputError(f"{path}: missing; is {workdir} the --workdir of a training run?")
  try:
    with open(path) as f:
      values = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserInputError(f"{path}: not a readable run config ({e})") from None
  if not isinstance(values, dict):
    raise UserInputError(f"{path}: not a run config (a JSON object is expected)")
  config = upgrade(values, path)
  validate(config)
  return config


def resolve_tta(config: ml_collections.ConfigDict, tta_flag: str | None) -> str:
  """The test-time views of a command: `--tta` if given, else the run's `eval.tta`."""
  name = tta_flag or config.eval.tta
  try:
    return tta.check(name)
  except ValueError as e:
    raise UserInputError(f"--tta: {e}") from None


def check_batch_size(global_batch: int, num_devices: int) -> int:
  """Examples per device; the global batch must split evenly over the devices."""
  if global_batch <= 0 or global_batch % num_devices:
    raise UserInputError(
        f"config: train.batch_size={global_batch} is not divisible by the {num_devices} local devices")
  return global_batch // num_devices


def step_config(config: ml_collections.ConfigDict, tta_name: str = "none", outputs: bool = False) -> StepConfig:
  """The constants the train and eval steps close over, the augment policy parsed; with `outputs`
  the eval step also returns logits and features."""
  return StepConfig(num_classes=NUM_CLASSES, mean=tuple(config.data.mean), std=tuple(config.data.std),
                    label_smoothing=config.loss.label_smoothing, l2=config.loss.l2,
                    augment=parse_policy(config.data.augment), fill_mode=config.data.fill_mode,
                    skip_nonfinite=config.train.skip_nonfinite_steps, ema_decay=config.ema.decay,
                    ema_warmup_power=config.ema.warmup_power, tta=tta_name, outputs=outputs)


def keeps_weight_average(config: ml_collections.ConfigDict) -> bool:
  """Whether the run keeps a moving average of its weights (ema.decay > 0)."""
  return bool(config.ema.decay)


def served_weights(config: ml_collections.ConfigDict) -> str:
  """Which weights pick the best checkpoint and serve eval, predict and export: "ema" or "raw"."""
  return config.ema.weights if keeps_weight_average(config) else "raw"


def architecture_signature(config: ml_collections.ConfigDict) -> dict:
  """The config fields that give parameters their shapes; a checkpoint only fits the same ones.

  (Compute dtype, dropout rates and the depthwise implementation may change on resume.) A
  multiplier of 1.0 is left out, as runs recorded before the multipliers existed have none.
  """
  signature = {k: config.model[k] for k in ("name", "variant", "depths", "dims")}
  for key in ("width_multiplier", "depth_multiplier"):
    if config.model[key] != 1.0:
      signature[key] = config.model[key]
  return json.loads(json.dumps(signature | {"num_classes": NUM_CLASSES}))
