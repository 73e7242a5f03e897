"""The pmapped train step: device-count invariance, freezing, and the eval step's padding mask."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from bloodcell_jax import optim
from bloodcell_jax.augment import parse
from bloodcell_jax.distributed import AXIS, unreplicate
from bloodcell_jax.models import create_model
from bloodcell_jax.steps import StepConfig, create_train_state, eval_step, pmapped_steps, train_step
from conftest import init_params, tiny_config

CFG = StepConfig(num_classes=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), l2=1e-3)


def _setup(config):
  model = create_model(config.model, 8)
  schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch=5, num_epochs=2)
  params = init_params(model, config.data.image_size, seed=0)
  tx = optim.create_optimizer(config.optim, params, schedule)
  return model, tx, create_train_state(params, tx, seed=0)


def _batches(n_steps, batch, size, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
           "label": rng.integers(0, 8, batch).astype(np.int32)} for _ in range(n_steps)]


def _on_devices(num_devices, model, tx, state, weights):
  """The pmapped train step on the first `num_devices` devices, with the state and class weights
  replicated there."""
  devices = jax.local_devices()[:num_devices]
  step = jax.pmap(functools.partial(train_step, model=model, tx=tx, cfg=CFG), axis_name=AXIS, devices=devices)
  return step, jax_utils.replicate(state, devices), jax_utils.replicate(jnp.asarray(weights), devices)


def _shard(batch, num_devices):
  return jax.tree.map(lambda x: x.reshape((num_devices, -1) + x.shape[1:]), batch)


def _train(num_devices, config, batches, weights):
  step, state, w = _on_devices(num_devices, *_setup(config), weights)
  losses = []
  for b in batches:
    state, metrics, _ = step(state, _shard(b, num_devices), w)
    losses.append(float(metrics["loss_sum"][0] / metrics["weight_sum"][0]))
  return losses, unreplicate(state)


@pytest.mark.parametrize("optimizer", ["lion"])  # AdamW's device-count invariance: test_multihost
def test_loss_and_params_do_not_depend_on_device_count(optimizer):
  if jax.local_device_count() < 4:
    pytest.skip("needs 4 (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count=4")
  config = tiny_config(**{"data.augment": "none", "optim.name": optimizer})
  batches = _batches(1, 16, 32) * 5  # one batch seen 5 times: the loss must fall
  weights = np.linspace(0.5, 2.0, 8).astype(np.float32)
  results = {n: _train(n, config, batches, weights) for n in (1, 2, 4)}
  for n in (2, 4):
    np.testing.assert_allclose(results[n][0], results[1][0], atol=1e-5)
    if optimizer == "lion":
      continue  # sign(update) flips on gradient entries within rounding of 0: params differ by 2*lr there
    for a, b in zip(jax.tree.leaves(results[n][1].params), jax.tree.leaves(results[1][1].params)):
      np.testing.assert_allclose(a, b, atol=1e-5)
  assert results[1][0][-1] < results[1][0][0]


def test_one_device_step_has_no_all_reduce_and_several_sum_their_gradients():
  if jax.local_device_count() < 2:
    pytest.skip("needs 2 (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count=2")
  setup = _setup(tiny_config(**{"data.augment": "none"}))
  batch = _batches(1, 8, 32)[0]
  for n in (1, 2):
    step, state, weights = _on_devices(n, *setup, np.ones(8, np.float32))
    hlo = step.lower(state, _shard(batch, n), weights).compile().as_text()
    assert ("all-reduce" in hlo) == (n > 1), n


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rule is about CPUs; accelerators donate")
def test_cpu_train_step_copies_no_parameter_or_moment():
  """Without donation on CPUs, the compiled step reads the old state and writes a new one; donated,
  XLA copied every Lion moment first (its in-place update raced the parameter update's read)."""
  model, tx, state = _setup(tiny_config(**{"data.augment": "none"}))
  p_train, _ = pmapped_steps(model, tx, CFG)
  n = jax.local_device_count()
  lowered = p_train.lower(jax_utils.replicate(state), _shard(_batches(1, 8, 32)[0], n), jax_utils.replicate(jnp.ones(8)))
  hlo = lowered.compile().as_text()
  entry = hlo[hlo.index("\nENTRY"):]
  assert len(re.findall(r"= f32\[[\d,]+\]\S* parameter\(", entry)) > 2 * len(jax.tree.leaves(state.params)) - 1
  assert not re.findall(r"= f32\[[\d,]+\]\S* copy\(%(?:param|flat_args)", entry)  # an entry parameter


@pytest.mark.parametrize("trainable, unfreeze, trained_tops", [
    ("head", 0, {"head_norm", "head_fc"}),
    ("last_stages", 1, {"head_norm", "head_fc", "stages_3"}),
])
def test_frozen_parameters_stay_bit_identical(trainable, unfreeze, trained_tops):
  config = tiny_config(**{"optim.trainable": trainable, "optim.unfreeze_stages": unfreeze, "optim.weight_decay": 0.1})
  _, _, initial = _setup(config)
  _, final = _train(1, config, _batches(3, 16, 32), np.ones(8, np.float32))
  for top in initial.params:
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial.params[top]),
                                                    jax.tree.leaves(final.params[top])))
    assert same == (top not in trained_tops), top


def test_decay_mask_spares_norms_biases_and_layer_scales():
  _, _, state = _setup(tiny_config())
  mask = optim.decay_mask(state.params)
  block = mask["stages_0"]["blocks_0"]
  assert block["conv_dw"]["kernel"] and block["mlp_fc1"]["kernel"]
  assert not block["gamma"] and not block["norm"]["scale"] and not block["mlp_fc1"]["bias"]
  assert not mask["head_norm"]["scale"] and mask["head_fc"]["kernel"]


def test_eval_step_ignores_padding():
  config = tiny_config()
  model, _, state = _setup(config)
  data = _batches(1, 8, 32)[0]
  step = jax.pmap(functools.partial(eval_step, model=model, cfg=CFG), axis_name=AXIS,
                  devices=jax.local_devices()[:1])
  params = jax_utils.replicate({"params": state.params}, jax.local_devices()[:1])
  w = jax_utils.replicate(jnp.ones(8), jax.local_devices()[:1])
  full, out_full = step(params, {"image": data["image"][None, :6], "label": data["label"][None, :6],
                                   "mask": np.ones((1, 6), np.float32)}, w)
  padded = {"image": data["image"][None].copy(), "label": data["label"][None].copy(),
            "mask": np.array([[1, 1, 1, 1, 1, 1, 0, 0]], np.float32)}
  masked, out = step(params, padded, w)
  probs, probs_full = out["probs"], out_full["probs"]
  np.testing.assert_allclose(masked["loss_sum"], full["loss_sum"], rtol=1e-6)
  assert float(masked["weight_sum"][0]) == 6.0
  np.testing.assert_allclose(probs[0, :6], probs_full[0], rtol=1e-6)


def test_warmup_cosine_schedule_values():
  config = tiny_config(**{"optim.warmup_epochs": 1.0, "optim.min_lr_ratio": 0.1, "optim.learning_rate": 1.0})
  schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch=10, num_epochs=3)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(30)) == pytest.approx(0.1)


@pytest.mark.parametrize("skip", [False, True])
def test_nonfinite_steps_are_flagged_and_optionally_skipped(skip):
  config = tiny_config()
  model, tx, state = _setup(config)
  cfg = StepConfig(num_classes=8, mean=(0.5,) * 3, std=(0.25,) * 3, skip_nonfinite=skip)
  devices = jax.local_devices()[:1]
  step = jax.pmap(functools.partial(train_step, model=model, tx=tx, cfg=cfg), axis_name=AXIS, devices=devices)
  batch = jax.tree.map(lambda x: x[None], _batches(1, 8, 32)[0])
  nan_weights = jax_utils.replicate(jnp.full(8, jnp.nan), devices)
  new_state, metrics, _ = step(jax_utils.replicate(state, devices), batch, nan_weights)
  assert not bool(metrics["finite"][0])
  new_params = unreplicate(new_state).params
  if skip:
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(state.params)):
      np.testing.assert_array_equal(a, b)
  else:
    assert any(np.isnan(np.asarray(x)).any() for x in jax.tree.leaves(new_params))


def test_bfloat16_compute_tracks_float32_loss():
  """bf16 compute with float32 parameters and optimiser state stays close to float32 over a few steps."""
  batches = _batches(1, 16, 32) * 4
  weights = np.ones(8, np.float32)
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(**{"model.dtype": dtype, "data.augment": "none", "optim.name": "adamw"})
    losses, state = _train(1, config, batches, weights)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    results[dtype] = losses
  np.testing.assert_allclose(results["bfloat16"], results["float32"], rtol=0.02)


def test_eval_never_augments_and_train_augments_per_policy():
  """The eval step (used by eval and predict) gives the same output whatever the train policy;
  the train step's loss does depend on it, and repeats exactly for the same state and batch."""
  config = tiny_config(**{"data.augment": "none"})
  model, tx, state = _setup(config)
  batch = _batches(1, 8, config.data.image_size)[0]
  eval_batch = dict(batch, mask=np.ones(8, np.float32))
  weights = jnp.ones(8)
  outputs = {}
  for policy in ("none", "heavy"):
    cfg = StepConfig(num_classes=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), augment=parse(policy))
    run_eval = jax.pmap(functools.partial(eval_step, model=model, cfg=cfg), axis_name=AXIS,
                        devices=jax.local_devices()[:1])
    run_train = jax.pmap(functools.partial(train_step, model=model, tx=tx, cfg=cfg), axis_name=AXIS,
                         devices=jax.local_devices()[:1])
    add_axis = functools.partial(jax.tree.map, lambda x: x[None])
    _, out = run_eval(add_axis({"params": state.params}), add_axis(eval_batch), weights[None])
    losses = [float(run_train(add_axis(state), add_axis(batch), weights[None])[1]["loss_sum"][0]) for _ in range(2)]
    outputs[policy] = (np.asarray(out["probs"]), losses)
  np.testing.assert_array_equal(outputs["none"][0], outputs["heavy"][0])
  assert outputs["heavy"][1][0] == outputs["heavy"][1][1]  # same key, same augmentation
  assert outputs["none"][1][0] != outputs["heavy"][1][0]
