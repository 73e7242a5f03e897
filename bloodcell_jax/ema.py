"""Exponential moving average of the model's variables, timm's ModelEmaV3 rule.

The average starts as a copy of the initial (or pretrained) variables and after each optimiser step
moves towards the new ones: `ema = decay * ema + (1 - decay) * new`. With warm-up the n-th update's
decay is `1 - n ** -power`, capped at `decay` (0 at the first: the average starts from the weights
after one step), so that early averages are not dominated by the random or pretrained start (power
3/4 suits runs of thousands of steps, 2/3 of millions). BatchNorm
statistics are averaged with the parameters, as timm does by default.
"""

import jax
import jax.numpy as jnp

WEIGHTS = ("ema", "raw")  # which weights a run's best/, eval, predict and export use


def decay_at(updates: jax.Array, decay: float, warmup_power: float) -> jax.Array:
  """The decay of the `updates`-th update (counted from 1); `warmup_power` 0 means no warm-up."""
  if not warmup_power:
    return jnp.asarray(decay, jnp.float32)
  warm = 1.0 - jnp.maximum(updates.astype(jnp.float32), 1.0) ** -warmup_power
  return jnp.clip(warm, 0.0, decay)


def update(average, new, decay: jax.Array):
  """One step of the average towards `new` (same tree), kept in the average's dtypes."""
  return jax.tree.map(lambda a, x: (a + (1.0 - decay) * (x.astype(jnp.float32) - a)).astype(a.dtype), average, new)


def check_decay(value: float) -> None:
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{value} must lie in [0, 1) (0 turns the average off)")


def check_warmup_power(value: float) -> None:
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{value} must lie in [0, 1] (0: no warm-up)")
