"""The same ConvNeXt train step in Keras 3 on its JAX backend, timed like `main.py --mode=benchmark`.

What a Keras user would run: `keras.applications.ConvNeXtTiny/Small/Base` (the same architecture,
ImageNet normalisation inside the model), Lion (same betas and decoupled weight
decay), global gradient-norm clipping at 1.0, class-weighted sparse cross-entropy (per-example
weights), float32 or the `mixed_bfloat16` policy; synthetic data, warm-up steps excluded, median
and spread over repeats. `train_on_batch` returns the loss to Python every step, which syncs; at
these step times that costs nothing measurable.

  pip install keras==3.15.1   # not in requirements-dev.txt: only this script needs it
  python benchmarks/keras_side_by_side.py --model convnext_tiny --batch 32 --size 96 --dtype float32
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bloodcell_jax import platform_setup  # noqa: E402  (selects the backend before JAX loads)

platform_setup.keep_freed_host_memory()  # as main.py --mode=benchmark does on a CPU
import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

# The public ConvNeXtTiny/Small/Base take no stochastic-depth rate; the builder behind them does.
from keras.src.applications.convnext import ConvNeXt  # noqa: E402

from bloodcell_jax.benchmark import time_steps  # noqa: E402  (the loop main.py --mode=benchmark times with)

MODELS = {"convnext_tiny": ([3, 3, 9, 3], [96, 192, 384, 768]), "convnext_small": ([3, 3, 27, 3], [96, 192, 384, 768]),
          "convnext_base": ([3, 3, 27, 3], [128, 256, 512, 1024])}


def time_train(args) -> dict:
  keras.utils.set_random_seed(0)
  if args.dtype == "bfloat16":
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  depths, dims = MODELS[args.model]
  model = ConvNeXt(depths, dims, drop_path_rate=args.drop_path, weights=None, input_shape=(args.size, args.size, 3),
                   classes=8, classifier_activation=None, include_preprocessing=True, name=args.model)
  model.compile(optimizer=keras.optimizers.Lion(1e-4, beta_1=0.9, beta_2=0.99, weight_decay=0.05,
                                                global_clipnorm=1.0),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (args.batch, args.size, args.size, 3)).astype(np.float32))
  labels = rng.integers(0, 8, args.batch)
  class_weights = rng.uniform(0.5, 1.5, 8).astype(np.float32)
  sample_weights = jax.device_put(class_weights[labels] / class_weights[labels].mean())
  labels = jax.device_put(labels)

  def step():
    return model.train_on_batch(images, labels, sample_weight=sample_weights)

  start = time.perf_counter()
  step()
  first_step_s = time.perf_counter() - start
  rates = [args.batch / t for t in time_steps(step, args.steps, args.repeats, args.warmup)]
  return {"images_per_s": statistics.median(rates), "images_per_s_min": min(rates),
          "images_per_s_max": max(rates), "first_step_s": first_step_s, "parameters": model.count_params()}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="convnext_tiny", choices=sorted(MODELS))
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=96)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  # Keras 3.15.1's ConvNeXt StochasticDepth draws unseeded random numbers, which its JAX backend
  # refuses inside the traced train step; so the Keras column runs without stochastic depth.
  parser.add_argument("--drop_path", type=float, default=0.0)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--out", help="write the result here as JSON")
  args = parser.parse_args()
  result = {"model": args.model, "batch": args.batch, "size": args.size, "dtype": args.dtype, **time_train(args)}
  env = {"keras": keras.__version__, "backend": keras.backend.backend(), "jax": jax.__version__,
         "device": jax.devices()[0].device_kind, "python": platform.python_version()}
  print(f"keras {args.model} b{args.batch} {args.size}px {args.dtype:<8} {result['images_per_s']:9.1f} img/s "
        f"[{result['images_per_s_min']:.1f}-{result['images_per_s_max']:.1f}]  first step "
        f"{result['first_step_s']:.1f}s  ({env['device']}, Keras {env['keras']}, JAX {env['jax']})", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"environment": env, "results": [result]}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
