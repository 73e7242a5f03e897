"""Weight EMA: timm's decay rule, the average the train step keeps, and which weights a run serves."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from bloodcell_jax import ema, optim
from bloodcell_jax.config import served_weights, validate
from bloodcell_jax.distributed import AXIS, unreplicate
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.models import create_model
from bloodcell_jax.steps import StepConfig, create_train_state, init_variables, split_variables, train_step
from conftest import tiny_config
from timm_reference import import_timm


def test_decay_with_warmup_by_hand():
  # The n-th update: 1 - n^-0.75, so 0 at n=1 (a copy), 1 - 2^-0.75 at n=2; capped at the decay.
  got = [float(ema.decay_at(jnp.asarray(n), 0.9, 0.75)) for n in (1, 2, 10, 10_000)]
  np.testing.assert_allclose(got, [0.0, 1 - 2 ** -0.75, 1 - 10 ** -0.75, 0.9], rtol=1e-6, atol=1e-7)
  assert float(ema.decay_at(jnp.asarray(3), 0.99, 0.0)) == pytest.approx(0.99)


def test_decay_equals_timm_model_ema_v3():
  import_timm()
  import torch
  from timm.utils.model_ema import ModelEmaV3
  reference = ModelEmaV3(torch.nn.Linear(2, 2), decay=0.999, use_warmup=True, warmup_power=0.75)
  for n in (1, 2, 10, 500, 100_000):
    assert float(ema.decay_at(jnp.asarray(n), 0.999, 0.75)) == pytest.approx(reference.get_decay(n), rel=1e-6, abs=1e-7)


def _steps(config, batches, skip_nonfinite=False, class_weights=None):
  """(state before, states after each step) of the pmapped train step on one device with an average."""
  model = create_model(config.model, 8)
  params, model_state = split_variables(init_variables(model, config.data.image_size, seed=0))
  tx = optim.create_optimizer(config.optim, params, optim.learning_rate_schedule(config.optim, 5, 2))
  state = create_train_state(params, tx, seed=0, model_state=model_state, with_ema=True)
  cfg = StepConfig(num_classes=8, mean=(0.5,) * 3, std=(0.25,) * 3, ema_decay=0.8, ema_warmup_power=0.75,
                   skip_nonfinite=skip_nonfinite)
  devices = jax.local_devices()[:1]
  step = jax.pmap(functools.partial(train_step, model=model, tx=tx, cfg=cfg), axis_name=AXIS, devices=devices)
  weights = jax_utils.replicate(jnp.asarray(class_weights if class_weights is not None else np.ones(8)), devices)
  replicated, states = jax_utils.replicate(state, devices), []
  for batch in batches:
    replicated, _, _ = step(replicated, jax.tree.map(lambda x: x[None], batch), weights)
    states.append(jax.device_get(unreplicate(replicated)))
  return jax.device_get(state), states


def _batch(seed, size=32):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8),
          "label": rng.integers(0, 8, 8).astype(np.int32)}


def test_train_step_keeps_the_average_computed_by_hand():
  config = tiny_config()
  start, states = _steps(config, [_batch(i) for i in range(4)])
  assert set(start.ema) == {"params"}
  expected = jax.tree.map(np.asarray, start.params)
  for n, state in enumerate(states, start=1):
    decay = min(0.8, 1 - n ** -0.75)
    expected = jax.tree.map(lambda a, x: decay * a + (1 - decay) * np.asarray(x), expected, state.params)
    for got, want in zip(jax.tree.leaves(state.ema["params"]), jax.tree.leaves(expected)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(states[-1].ema["params"]),
                                                      jax.tree.leaves(states[-1].params))]
  assert max(moved) > 0  # the average lags the raw weights


def test_batchnorm_statistics_are_averaged_too():
  config = tiny_config(**{"model.name": "efficientnet", "model.variant": "mobilenetv3_small_100",
                          "model.width_multiplier": 0.25, "model.depth_multiplier": 0.1})
  start, states = _steps(config, [_batch(0), _batch(1)])
  assert set(start.ema) == {"params", "batch_stats"}
  decay = [0.0, min(0.8, 1 - 2 ** -0.75)]
  expected = jax.tree.map(np.asarray, start.model_state["batch_stats"])
  for d, state in zip(decay, states):
    expected = jax.tree.map(lambda a, x: d * a + (1 - d) * np.asarray(x), expected, state.model_state["batch_stats"])
  for got, want in zip(jax.tree.leaves(states[-1].ema["batch_stats"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_skipped_nonfinite_step_leaves_the_average_alone():
  start, (state,) = _steps(tiny_config(), [_batch(0)], skip_nonfinite=True, class_weights=np.full(8, np.nan))
  for a, b in zip(jax.tree.leaves(state.ema), jax.tree.leaves(start.ema)):
    np.testing.assert_array_equal(a, b)


def test_config_rules_name_the_field():
  for field, value, message in (("decay", 1.0, "ema.decay=1.0 must lie in [0, 1)"),
                                ("warmup_power", -1.0, "ema.warmup_power=-1.0 must lie in [0, 1]"),
                                ("weights", "best", "ema.weights='best' is not one of ema, raw")):
    config = tiny_config(**{f"ema.{field}": value})
    with pytest.raises(UserInputError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
      validate(config)
  assert served_weights(tiny_config()) == "raw"  # no average kept: the raw weights, whatever ema.weights says
  assert served_weights(tiny_config(**{"ema.decay": 0.99})) == "ema"
  assert served_weights(tiny_config(**{"ema.decay": 0.99, "ema.weights": "raw"})) == "raw"
