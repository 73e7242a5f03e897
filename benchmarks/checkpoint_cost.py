"""What verified checkpoints cost: save and restore of a ConvNeXt-B training state (parameters and Lion's
momentum, about 700 MB) with the manifest (bloodcell_jax.checkpointing, as training does) and without
it (the same Orbax items, no digests), side by side in one process.

  python benchmarks/checkpoint_cost.py [--variant base] [--repeats 3] [--dir /tmp/ckpt_cost]

Save is timed until the write is on disk (wait_until_finished), restore until the arrays are in host
memory and, with the manifest, checked. Medians over the repeats; the directory's disk matters, so
name it with the figures.
"""

import argparse
import os
import platform
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bloodcell_jax  # noqa: E402,F401  (selects the JAX backend before JAX loads)
import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from bloodcell_jax import checkpointing, integrity, optim  # noqa: E402
from bloodcell_jax.config import get_config  # noqa: E402
from bloodcell_jax.models import create_model  # noqa: E402
from bloodcell_jax.steps import create_train_state, init_variables, split_variables  # noqa: E402


def training_state(variant: str):
  config = get_config()
  config.model.variant = variant
  model = create_model(config.model, 8)
  params, model_state = split_variables(init_variables(model, 32, 0))
  tx = optim.create_optimizer(config.optim, params, optim.learning_rate_schedule(config.optim, 10, 1))
  return jax.device_get(create_train_state(params, tx, 0, model_state))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--variant", default="base")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dir", default="/tmp/checkpoint_cost")
  args = parser.parse_args()
  state = training_state(args.variant)
  progress = {"epoch": np.int64(0), "offset": np.int64(0)}
  meta = {"best": 0.5, "bad_epochs": 0}
  size = checkpointing.tree_bytes(state)
  times = {k: [] for k in ("digest", "save_plain", "save_verified", "restore_plain", "restore_verified")}
  for repeat in range(args.repeats):
    shutil.rmtree(args.dir, ignore_errors=True)
    start = time.perf_counter()
    integrity.make_manifest({"state": state, "progress": progress}, {"meta": meta})
    times["digest"].append(time.perf_counter() - start)

    def run_plain():
      plain = checkpointing._manager(os.path.join(args.dir, "plain"), 1)
      start = time.perf_counter()
      plain.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            progress=ocp.args.StandardSave(progress), meta=ocp.args.JsonSave(meta)))
      plain.wait_until_finished()
      times["save_plain"].append(time.perf_counter() - start)
      start = time.perf_counter()
      plain.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(state),
                                               progress=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
      times["restore_plain"].append(time.perf_counter() - start)
      plain.close()

    def run_verified():
      verified = checkpointing.RunCheckpoints(os.path.join(args.dir, "verified"), 1)
      start = time.perf_counter()
      verified.save(1, state, progress, meta, is_best=False)
      verified.last.wait_until_finished()
      times["save_verified"].append(time.perf_counter() - start)
      start = time.perf_counter()
      restored = verified.restore(state, lambda meta: None)
      times["restore_verified"].append(time.perf_counter() - start)
      assert restored is not None
      verified.close()

    for run in ((run_plain, run_verified) if repeat % 2 == 0 else (run_verified, run_plain)):  # alternate: the
      run()  # second write of a repeat shares the disk with the first's writeback
    print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
  shutil.rmtree(args.dir, ignore_errors=True)
  median = {k: statistics.median(v) for k, v in times.items()}
  print(f"ConvNeXt-{args.variant} training state {size / 2**20:.0f} MiB; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; directory {args.dir}")
  print(f"digests alone {median['digest']:.2f} s ({size / median['digest'] / 2**30:.2f} GiB/s)")
  for what in ("save", "restore"):
    plain, verified = median[f"{what}_plain"], median[f"{what}_verified"]
    print(f"{what:<8} without manifest {plain:.2f} s, with {verified:.2f} s (+{100 * (verified / plain - 1):.0f}%)")


if __name__ == "__main__":
  main()
