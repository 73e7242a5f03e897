"""Where XLA:CPU must write a value to memory instead of evaluating it again in each consumer."""

import jax


def computed_once(y: jax.Array) -> jax.Array:
  """`y` written to memory once, on CPUs.

  XLA:CPU fuses a cheap-looking producer into each of its consumers and evaluates it again there,
  element by element (and it removes `optimization_barrier`s). That is right for an add, and costly
  for a k*k-tap depthwise sum read by a LayerNorm's statistics and its normalisation (4x the
  layer's forward and backward time, ConvNeXt-T on a 2-core Zen 3), or for stochastic depth's
  per-example random mask, whose threefry rounds ran again for every element of the activations
  it scales. A conditional's operand is always a buffer; both branches return `y` (the predicate
  only has to be unknown when compiling). Other backends get `y` as is: a GPU conditional waits
  for the host.
  """
  if jax.default_backend() != "cpu":
    return y
  corner = y[(0,) * y.ndim]
  return jax.lax.cond(corner == corner, lambda v: v, lambda v: v * 1, y)
