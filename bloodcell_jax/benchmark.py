"""`--mode=benchmark`: how fast the jitted, pmapped steps run on this machine, on synthetic data.

For each (global batch, compute dtype) it reports compile time apart from steady state, the train
step with and without augmentation and the eval step: median images/s over repeats (warm-up steps
excluded, `block_until_ready` on results) with the spread, per device too; XLA's FLOP count of the
step and the model FLOP utilisation against the device's peak where the peak is known; peak device
memory where the backend reports it; and the host input pipeline's images/s next to what the step
consumes. Every figure is written with the device name, JAX version and XLA flags.
"""

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import jax_utils

from bloodcell_jax import cpu_info, optim
from bloodcell_jax.atomic_files import write_json_atomic
from bloodcell_jax.classes import NUM_CLASSES
from bloodcell_jax.config import check_batch_size, keeps_weight_average, step_config
from bloodcell_jax.data import pipeline
from bloodcell_jax.data.sources import ImageSet
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.models import create_model
from bloodcell_jax.steps import create_train_state, init_variables, pmapped_steps, split_variables, variables_of

# Dense peak FLOP/s per chip by compute dtype, from the vendors' data sheets (no sparsity).
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},  # SXM; the PCIe card is about 25% lower
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "L4": {"bfloat16": 121e12, "float32": 30.3e12},
    "V100": {"float16": 125e12, "float32": 15.7e12},
    "T4": {"float16": 65e12, "float32": 8.1e12},
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v5e": {"bfloat16": 197e12},
    "TPU v5p": {"bfloat16": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12},
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The chip's peak for `dtype`, or None when the device is not in the table."""
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):
    if name.lower() in device_kind.lower():
      return PEAK_FLOPS[name].get(dtype)
  return None


def local_peak_flops(dtype: str) -> float | None:
  """The peak of all local devices together: the chips' data-sheet figure times their number, or on
  the CPU backend the host's estimate (cpu_info; fake CPU devices share the same cores)."""
  device = jax.local_devices()[0]
  if device.platform == "cpu":
    cpu = cpu_info.host()
    return cpu.peak_flops(dtype) if cpu else None
  peak = peak_flops(device.device_kind, dtype)
  return peak * jax.local_device_count() if peak else None


def synthetic_batch(global_batch: int, image_size: int, num_devices: int, seed: int = 0) -> dict:
  """Random uint8 images and labels, a leading device axis, as the pmapped steps take them."""
  rng = np.random.default_rng(seed)
  per_device = global_batch // num_devices
  return {
      "image": rng.integers(0, 256, (num_devices, per_device, image_size, image_size, 3), dtype=np.uint8),
      "label": rng.integers(0, NUM_CLASSES, (num_devices, per_device)).astype(np.int32),
      "mask": np.ones((num_devices, per_device), np.float32),
  }


def time_steps(run_step, steps: int, repeats: int, warmup: int) -> list[float]:
  """Seconds per step of each repeat; `run_step()` dispatches one step and returns its outputs."""
  out = None
  for _ in range(warmup):
    out = run_step()
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      out = run_step()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / steps)
  return times


def _flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _peak_memory() -> int | None:
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def host_pipeline_rate(image_size: int, global_batch: int, num_devices: int, steps: int = 20) -> float:
  """Images/s the host pipeline (shuffle, gather, background thread, copy to devices) delivers."""
  n = global_batch * (steps + 1)
  data = ImageSet(np.random.default_rng(0).integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8),
                  np.zeros(n, np.int32), np.array([f"#{i}" for i in range(n)]))
  batches = pipeline.to_devices(pipeline.train_batches(data, global_batch, num_devices, seed=0, epoch=0))
  jax.block_until_ready(next(batches))
  start = time.perf_counter()
  count = 0
  for batch in batches:
    jax.block_until_ready(batch)
    count += global_batch
  return count / (time.perf_counter() - start)


def _summary(times: list[float], global_batch: int, num_devices: int) -> dict:
  rates = [global_batch / t for t in times]
  return {"images_per_s": float(np.median(rates)), "images_per_s_min": float(min(rates)),
          "images_per_s_max": float(max(rates)), "images_per_s_per_device": float(np.median(rates)) / num_devices,
          "step_ms": 1e3 * float(np.median(times))}


def benchmark_one(config: ml_collections.ConfigDict, global_batch: int, dtype: str, steps: int, repeats: int,
                  warmup: int) -> dict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.dtype = dtype
  config.train.batch_size = global_batch
  num_devices = jax.local_device_count()
  check_batch_size(global_batch, num_devices)
  size = config.data.image_size
  model = create_model(config.model, NUM_CLASSES)
  params, model_state = split_variables(init_variables(model, size, config.seed))
  tx = optim.create_optimizer(config.optim, params, optim.learning_rate_schedule(config.optim, 100, 1))
  state = jax_utils.replicate(create_train_state(params, tx, config.seed, model_state,
                                                 with_ema=keeps_weight_average(config)))
  weights = jax_utils.replicate(jnp.ones(NUM_CLASSES))
  batch = next(jax_utils.prefetch_to_device(iter([synthetic_batch(global_batch, size, num_devices)]), 1))
  train_batch = {k: batch[k] for k in ("image", "label")}
  result = {"global_batch": global_batch, "dtype": dtype, "image_size": size, "num_devices": num_devices}

  for augment in (config.data.augment, "none") if config.data.augment != "none" else ("none",):
    config.data.augment = augment
    p_train, p_eval = pmapped_steps(model, tx, step_config(config))
    start = time.perf_counter()
    compiled = p_train.lower(state, train_batch, weights).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def run_step():
      holder["state"], metrics, _ = compiled(holder["state"], train_batch, weights)
      return metrics

    entry = _summary(time_steps(run_step, steps, repeats, warmup), global_batch, num_devices)
    entry["compile_s"] = compile_s
    flops = _flops(compiled)
    if flops:
      entry["flops_per_step"] = flops * num_devices
      peak = local_peak_flops(dtype)
      achieved = entry["flops_per_step"] * entry["images_per_s"] / global_batch
      entry["mfu"] = achieved / peak if peak else None
    result[f"train_augment_{augment}"] = entry
    state = holder["state"]

  start = time.perf_counter()
  compiled_eval = p_eval.lower(variables_of(state), batch, weights).compile()
  eval_entry = _summary(time_steps(lambda: compiled_eval(variables_of(state), batch, weights), steps, repeats, warmup),
                        global_batch, num_devices)
  eval_entry["compile_s"] = time.perf_counter() - start
  result["eval"] = eval_entry
  result["peak_device_memory_bytes"] = _peak_memory()
  return result


def environment() -> dict:
  device = jax.local_devices()[0]
  env = {"device_kind": device.device_kind, "platform": device.platform, "num_local_devices": jax.local_device_count(),
         "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "xla_threads": os.environ.get("PJRT_NPROC") or os.environ.get("NPROC") or "one per core",
         "peak_flops_known": local_peak_flops("bfloat16") is not None or local_peak_flops("float32") is not None}
  cpu = cpu_info.host()
  if cpu:
    env["host_cpu"] = cpu.describe()
    env["host_cpu_fields"] = {"vendor": cpu.vendor, "family": cpu.family, "model": cpu.model,
                              "logical_cpus": cpu.logical_cpus, "cores": cpu.cores, "ghz": cpu.ghz,
                              "vector_extensions": cpu.vector_extensions}
    if device.platform == "cpu":
      env["peak_estimate"] = {d: cpu.describe_peak(d) for d in ("float32", "bfloat16")}
  return env


def format_table(results: list[dict]) -> str:
  head = (f"{'batch':>6} {'dtype':>9} {'train+aug img/s':>16} {'train img/s':>12} {'eval img/s':>11} "
          f"{'compile s':>10} {'GFLOP/step':>11} {'MFU':>7} {'peak MiB':>9}")
  lines = [head]
  for r in results:
    train_keys = [k for k in r if k.startswith("train_augment_")]
    aug = next((r[k] for k in train_keys if not k.endswith("_none")), None)
    plain = r.get("train_augment_none")
    mfu = plain.get("mfu")
    flops = plain.get("flops_per_step")
    memory = r["peak_device_memory_bytes"]
    lines.append(
        f"{r['global_batch']:>6} {r['dtype']:>9} {aug['images_per_s'] if aug else float('nan'):>16.1f} "
        f"{plain['images_per_s']:>12.1f} {r['eval']['images_per_s']:>11.1f} {plain['compile_s']:>10.1f} "
        f"{flops / 1e9 if flops else float('nan'):>11.2f} {f'{100 * mfu:.1f}%' if mfu else 'n/a':>7} "
        f"{memory / 2**20 if memory else float('nan'):>9.0f}")
  return "\n".join(lines)


def run_benchmark(config: ml_collections.ConfigDict, workdir: str, batch_sizes: list[int], dtypes: list[str],
                  steps: int = 10, repeats: int = 5, warmup: int = 3) -> dict:
  """Runs the sweep, prints the table and writes `<workdir>/benchmark.json`; returns the report."""
  for dtype in dtypes:
    if dtype not in ("float32", "bfloat16", "float16"):
      raise UserInputError(f"--bench_dtypes: unknown dtype {dtype!r} (float32, bfloat16, float16)")
  env = environment()
  results = [benchmark_one(config, b, d, steps, repeats, warmup) for b in batch_sizes for d in dtypes]
  host_rates = {b: host_pipeline_rate(config.data.image_size, b, env["num_local_devices"]) for b in batch_sizes}
  for r in results:
    consumed = max(v["images_per_s"] for k, v in r.items() if k.startswith("train_augment_"))
    r["host_pipeline_images_per_s"] = host_rates[r["global_batch"]]
    r["host_pipeline_over_step"] = r["host_pipeline_images_per_s"] / consumed
  report = {"environment": env, "model": config.model.to_dict(), "steps": steps, "repeats": repeats,
            "warmup": warmup, "results": results}
  os.makedirs(workdir, exist_ok=True)
  out = os.path.join(workdir, "benchmark.json")
  write_json_atomic(out, report)
  print(f"{env['device_kind']} x {env['num_local_devices']} (XLA threads: {env['xla_threads']}), JAX {env['jax']}, "
        f"XLA_FLAGS='{env['xla_flags']}', "
        f"model {config.model.name} {config.model.variant}, {config.data.image_size}x{config.data.image_size}")
  if "host_cpu" in env:
    print(f"host CPU: {env['host_cpu']}")
  for dtype in dtypes:
    if dtype in env.get("peak_estimate", {}):
      print(f"MFU against the {env['peak_estimate'][dtype]} (bloodcell_jax/cpu_info.py)")
  print(format_table(results))
  if not env["peak_flops_known"]:
    print(f"MFU: peak FLOP/s of '{env['device_kind']}' unknown (not in the table)")
  for r in results:
    print(f"host pipeline, batch {r['global_batch']}: {r['host_pipeline_images_per_s']:.0f} images/s, "
          f"{r['host_pipeline_over_step']:.1f}x what the {r['dtype']} train step consumes")
  print(f"saved {out}")
  return report
