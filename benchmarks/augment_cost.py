"""What each augmentation op and each named policy costs on this machine's default JAX device.

  python benchmarks/augment_cost.py --batch 64 --size 96 [--out augment_cost.json]

Times `augment_batch` alone, jitted, on one device batch of uint8 images: every op of the policy
library applied to every example (probability 1, the magnitude the `heavy` policy gives it), then
the named policies as the train step runs them. Milliseconds per batch, median over repeats, with
the share of each op in the sum. Where the `heavy` policy costs too much against a train step
(docs/benchmarks.md), this says which ops to look at first; on a GPU it shows launch-bound ops as
a floor of a few microseconds per kernel rather than their arithmetic.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bloodcell_jax  # noqa: E402,F401  (selects the JAX backend before JAX loads)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bloodcell_jax.augment import policies  # noqa: E402
from bloodcell_jax.benchmark import time_steps  # noqa: E402


def op_magnitudes() -> dict[str, float]:
  """Every op at the magnitude `heavy` gives it (the others at 0.8; mixing ops at their alpha)."""
  heavy = {name: m for name, _, m in policies.parse("heavy").entries}
  return {name: heavy.get(name, 0.8) for name in list(policies.IMAGE_OPS) + list(policies.MIX_OPS)}


def time_policy(policy: str, images: jax.Array, targets: jax.Array, repeats: int, steps: int) -> float:
  """Median milliseconds of one jitted augment_batch call; a new key per call, as in training."""
  run = jax.jit(lambda key, x, y: policies.augment_batch(key, x, y, policy))
  keys = iter(jax.random.split(jax.random.PRNGKey(0), (repeats + 1) * steps + 8))
  times = time_steps(lambda: run(next(keys), images, targets), steps, repeats, warmup=3)
  return 1e3 * float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=64, help="images per device batch")
  parser.add_argument("--size", type=int, default=96)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--policies", default="light;medium;heavy;report;randaugment(2, 9)", help="separated by ;")
  parser.add_argument("--out", help="write the table here as JSON")
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8))
  targets = jax.nn.one_hot(jnp.asarray(rng.integers(0, 8, args.batch)), 8)
  baseline = time_policy("none", images, targets, args.repeats, args.steps)  # uint8 -> float only
  ops = {name: time_policy(f"{name}(1, {m})", images, targets, args.repeats, args.steps) - baseline
         for name, m in op_magnitudes().items()}
  named = {p: time_policy(p, images, targets, args.repeats, args.steps) - baseline
           for p in args.policies.split(";") if p.strip()}

  device = jax.devices()[0]
  print(f"{device.device_kind} ({device.platform}), JAX {jax.__version__}, batch {args.batch}, "
        f"{args.size}x{args.size}; ms per batch over the uint8->float conversion ({baseline:.2f} ms)")
  total = sum(max(t, 0.0) for t in ops.values())
  for name, t in sorted(ops.items(), key=lambda item: -item[1]):
    print(f"  {name:14s} {t:8.2f} ms  {100 * max(t, 0.0) / total:5.1f}%")
  for name, t in named.items():
    print(f"  policy {name:18s} {t:8.2f} ms")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"device_kind": device.device_kind, "platform": device.platform, "jax": jax.__version__,
                 "batch": args.batch, "size": args.size, "conversion_ms": baseline, "ops_ms": ops,
                 "policies_ms": named}, f, indent=1)


if __name__ == "__main__":
  main()
