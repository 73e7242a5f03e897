"""What each CPU optimisation of the ConvNeXt train step is worth: swap one back, time the step.

  python benchmarks/cpu_step_ablation.py --variant tiny --batch 32 --size 96

Runs each configuration in a fresh process (the allocator setting is per process) and prints
images/s of the full jitted train step (`steps.pmapped_steps`: class-weighted loss, Lion, clipping,
no augmentation), steps dispatched back to back as in training, median over repeats.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# what is swapped back: the child's environment that swaps it
CONFIGURATIONS = {
    "all optimisations": {},
    "glibc allocator left alone": {"GLIBC_TUNABLES": "glibc.malloc.check=0"},
    "depthwise kernel gradient by autodiff": {"ABLATE": "depthwise"},
    "GELU by jax.nn.gelu (erfc, autodiff)": {"ABLATE": "gelu"},
    "stem/downsampling as nn.Conv": {"ABLATE": "patch_conv"},
    "none (all four swapped back)": {"GLIBC_TUNABLES": "glibc.malloc.check=0", "ABLATE": "depthwise,gelu,patch_conv"},
}

CHILD = r"""
import json, os, statistics, sys, time
sys.path.insert(0, {root!r})
from bloodcell_jax import platform_setup  # selects the backend before JAX loads
platform_setup.keep_freed_host_memory()  # as main.py --mode=train/benchmark does on a CPU
import jax, jax.numpy as jnp, numpy as np
from flax import jax_utils, linen as nn
from bloodcell_jax import optim
from bloodcell_jax.models import convnext, create_model
from bloodcell_jax.steps import create_train_state, init_variables, pmapped_steps, split_variables
from bloodcell_jax.config import step_config
from configs.accelerator import convnext_config

ablate = set(filter(None, os.environ.get("ABLATE", "").split(",")))
if "gelu" in ablate:
  convnext.gelu = lambda x: nn.gelu(x, approximate=False)
if "patch_conv" in ablate:
  convnext.PatchConv = lambda features, patch, dtype=None, kernel_init=None, name=None: nn.Conv(
      features, (patch, patch), strides=(patch, patch), padding="VALID", dtype=dtype, kernel_init=kernel_init, name=name)
config = convnext_config({variant!r})
config.model.dtype = "float32"
config.model.depthwise_impl = "shift_autodiff" if "depthwise" in ablate else "shift"
config.data.image_size, config.train.batch_size, config.data.augment = {size}, {batch}, "none"
model = create_model(config.model, 8)
params, model_state = split_variables(init_variables(model, {size}, 0))
tx = optim.create_optimizer(config.optim, params, optim.learning_rate_schedule(config.optim, 100, 1))
state = jax_utils.replicate(create_train_state(params, tx, 0, model_state))
weights = jax_utils.replicate(jnp.ones(8))
rng = np.random.default_rng(0)
batch = jax_utils.replicate({{"image": rng.integers(0, 256, ({batch}, {size}, {size}, 3), dtype=np.uint8),
                              "label": rng.integers(0, 8, {batch}).astype(np.int32)}})
train_step, _ = pmapped_steps(model, tx, step_config(config))
step = train_step.lower(state, batch, weights).compile()
for _ in range(3):
  state, metrics, _ = step(state, batch, weights)
jax.block_until_ready(metrics)
rates = []
for _ in range({repeats}):
  start = time.perf_counter()
  for _ in range({steps}):
    state, metrics, _ = step(state, batch, weights)
  jax.block_until_ready(metrics)
  rates.append({batch} * {steps} / (time.perf_counter() - start))
print(json.dumps({{"images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates)}}))
"""


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", default="tiny")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=96)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  code = CHILD.format(root=ROOT, **vars(args))
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ABLATE")}
  print(f"ConvNeXt-{args.variant}, batch {args.batch}, {args.size}x{args.size}, float32, train step images/s")
  for name, env in CONFIGURATIONS.items():
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True,
                            text=True)
    if result.returncode != 0:
      print(f"{name}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
      return 1
    rate = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"  {name:<40} {rate['images_per_s']:6.1f} [{rate['min']:.1f}-{rate['max']:.1f}]", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
