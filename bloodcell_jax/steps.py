"""The training state and the pure, device-parallel train and eval steps.

Steps run under `jax.pmap` with the batch laid out [devices, per_device, ...]. The loss is the
global class-weighted mean: numerator and denominator are summed over devices before dividing
and gradients are summed, so the result does not depend on how many devices share the batch.
Images arrive as uint8 and are normalised on the device.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct

from bloodcell_jax import ema, tta
from bloodcell_jax.augment import Policy, augment_batch, to_unit_range
from bloodcell_jax.distributed import AXIS, sum_over_devices
from bloodcell_jax.losses import l2_penalty, weighted_cross_entropy_terms
from bloodcell_jax.models import taps
from bloodcell_jax.optim import decay_mask


class TrainState(struct.PyTreeNode):
  """Everything that changes during training; plain arrays, so Orbax saves it as is."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # base key (raw uint32[2]); each step folds in the step and the device index
  model_state: Any = struct.field(default_factory=dict)  # other variable collections: BatchNorm's batch_stats
  ema: Any = struct.field(default_factory=dict)  # moving average of {"params", **model_state}; {} when off


def init_variables(model: nn.Module, image_size: int, seed: int) -> dict:
  """Freshly initialised variables ({"params": ..., and "batch_stats" where the model has BatchNorm});
  a pure function of (model, image_size, seed)."""
  init_key = jax.random.split(jax.random.PRNGKey(seed))[0]
  return dict(jax.jit(functools.partial(model.init, train=False))(
      init_key, jnp.zeros((1, image_size, image_size, 3), jnp.float32)))


def split_variables(variables: dict) -> tuple[Any, dict]:
  """(params, every other collection)."""
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def create_train_state(params, tx: optax.GradientTransformation, seed: int, model_state: dict | None = None,
                       with_ema: bool = False) -> TrainState:
  """Step 0; `with_ema` starts the moving average as a copy of the variables."""
  train_key = jax.random.split(jax.random.PRNGKey(seed))[1]
  model_state = dict(model_state or {})
  average = jax.tree.map(jnp.array, {"params": params, **model_state}) if with_ema else {}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_key,
                    model_state=model_state, ema=average)


def variables_of(state: TrainState) -> dict:
  """What `model.apply` takes: the parameters and the model state."""
  return {"params": state.params, **state.model_state}


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 [0, 255] or float [0, 1] images to float32 (x - mean) / std per channel."""
  return (to_unit_range(images) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


@struct.dataclass
class StepConfig:
  """Constants the steps close over (hashable, so steps can be built once per run)."""

  num_classes: int = struct.field(pytree_node=False)
  mean: tuple = struct.field(pytree_node=False)
  std: tuple = struct.field(pytree_node=False)
  label_smoothing: float = struct.field(pytree_node=False, default=0.0)
  l2: float = struct.field(pytree_node=False, default=0.0)
  augment: Policy = struct.field(pytree_node=False, default=Policy())  # parsed once (augment.parse)
  fill_mode: str = struct.field(pytree_node=False, default="reflect")
  skip_nonfinite: bool = struct.field(pytree_node=False, default=False)
  ema_decay: float = struct.field(pytree_node=False, default=0.0)  # used where the state holds an average
  ema_warmup_power: float = struct.field(pytree_node=False, default=0.75)
  tta: str = struct.field(pytree_node=False, default="none")  # test-time views in eval (see tta.VIEWS)
  outputs: bool = struct.field(pytree_node=False, default=False)  # eval also returns logits and features


def train_step(state: TrainState, batch: dict, class_weights: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, cfg: StepConfig):
  """One optimisation step on this device's share of the batch (call under pmap with AXIS).

  Returns the new state, summed metrics (identical on every device) and this device's softmax
  probabilities for the epoch's training metrics.
  """
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))
  augment_key, dropout_key = jax.random.split(rng)
  images, targets = augment_batch(augment_key, batch["image"], jax.nn.one_hot(batch["label"], cfg.num_classes),
                                  cfg.augment, cfg.fill_mode)
  images = normalize(images, cfg.mean, cfg.std)
  num_devices = jax.lax.axis_size(AXIS)

  def loss_fn(params):
    variables = {"params": params, **state.model_state}
    if state.model_state:  # BatchNorm: batch statistics (averaged over AXIS) update the running ones
      logits, model_state = model.apply(variables, images, train=True, rngs={"dropout": dropout_key},
                                        mutable=list(state.model_state))
    else:
      logits, model_state = model.apply(variables, images, train=True, rngs={"dropout": dropout_key}), {}
    weighted_ce, weights = weighted_cross_entropy_terms(logits, targets, class_weights, cfg.label_smoothing)
    total_weight = jnp.maximum(sum_over_devices(weights.sum()), 1e-12)
    loss = weighted_ce.sum() / total_weight
    if cfg.l2:
      loss += cfg.l2 * l2_penalty(params, decay_mask(params)) / num_devices
    return loss, (logits, weighted_ce.sum(), weights.sum(), dict(model_state))

  (_, (logits, ce_sum, weight_sum, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = sum_over_devices(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  loss_sum = sum_over_devices(ce_sum)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
  average = state.ema
  if average:
    decay = ema.decay_at(state.step + 1, cfg.ema_decay, cfg.ema_warmup_power)
    average = ema.update(average, {"params": params, **model_state}, decay)
  if cfg.skip_nonfinite:  # keep the previous parameters, optimiser, model state and average for this step
    params, opt_state, model_state, average = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old), (params, opt_state, model_state, average),
        (state.params, state.opt_state, state.model_state, state.ema))
  metrics = {
      "loss_sum": loss_sum,
      "weight_sum": sum_over_devices(weight_sum),
      "grad_norm": grad_norm,
      "finite": finite,
  }
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state,
                            ema=average)
  return new_state, metrics, jax.nn.softmax(logits)


def apply_with_features(model: nn.Module, variables: dict, images: jax.Array) -> tuple[jax.Array, tuple]:
  """(logits, per-stage feature statistics) in evaluation mode (taps.stage_statistics)."""
  logits, intermediates = model.apply(variables, images, train=False, mutable=[taps.INTERMEDIATES])
  return logits, taps.stage_statistics(intermediates)


def eval_step(variables: dict, batch: dict, class_weights: jax.Array, *, model: nn.Module, cfg: StepConfig):
  """The masked, weighted loss sums of one eval batch and its outputs: "probs", with `cfg.tta` the
  probabilities averaged over the test-time views ("tta_probs", else None), and with `cfg.outputs`
  the plain view's "logits" and "features" (a tuple, one (B, D) array per stage); no augmentation,
  no dropout.

  The loss is that of the plain images, so it does not depend on the test-time views.
  """
  images = normalize(batch["image"], cfg.mean, cfg.std)
  if cfg.outputs:
    apply = functools.partial(apply_with_features, model, variables)
  else:
    apply = lambda x: (model.apply(variables, x, train=False), None)  # noqa: E731
  logits, probs, tta_probs, features = tta.probabilities(apply, images, cfg.tta)
  targets = jax.nn.one_hot(batch["label"], cfg.num_classes)
  weighted_ce, weights = weighted_cross_entropy_terms(logits, targets, class_weights, cfg.label_smoothing)
  mask = batch["mask"]
  metrics = {
      "loss_sum": sum_over_devices((weighted_ce * mask).sum()),
      "weight_sum": sum_over_devices((weights * mask).sum()),
  }
  outputs = {"probs": probs, "tta_probs": None if cfg.tta == "none" else tta_probs}
  if cfg.outputs:
    outputs.update(logits=logits, features=features)
  return metrics, outputs


def pmapped_steps(model: nn.Module, tx: optax.GradientTransformation, cfg: StepConfig) -> tuple[Callable, Callable]:
  """(train_step, eval_step) compiled with pmap; the train state's buffers are donated on accelerators.

  Not on CPUs, where memory is plentiful and donation costs time: the optimiser writes each new
  moment over the donated old one, which the parameter update reads too, so XLA first copies every
  moment (111 MB a step for ConvNeXt-T, about 5% of its train step on a 2-core Zen 3).
  """
  donate = () if jax.default_backend() == "cpu" else (0,)
  p_train = jax.pmap(functools.partial(train_step, model=model, tx=tx, cfg=cfg),
                     axis_name=AXIS, donate_argnums=donate)
  p_eval = jax.pmap(functools.partial(eval_step, model=model, cfg=cfg), axis_name=AXIS)
  return p_train, p_eval
