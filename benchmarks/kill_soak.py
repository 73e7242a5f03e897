"""Soak test of resume: SIGKILL a training run at random instants, resume it, and check that nothing is
lost: the resumed run must end with the parameters of a run that was never interrupted.

  python benchmarks/kill_soak.py --trials 200 --out /tmp/kill_soak.json

A tiny ConvNeXt on the bundled sample, a checkpoint after every step (so most kills land during a
save: Orbax writing, renaming, or deleting the oldest), 2 fake CPU devices. Each trial: start the
run, wait for its first checkpoint, kill -9 after a random delay drawn over the rest of its
duration, then run the same command again until it finishes, and compare the printed parameter
fingerprint with the reference. A trial whose resume fails or ends with other parameters is lost.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config", "configs/quickstart.py", "--config.eval.report=False", "--config.data.image_size=32",
        "--config.model.depths=(1,1,1,1)", "--config.model.dims=(8,16,24,32)", "--config.model.depthwise_impl=xla",
        "--config.train.batch_size=16", "--config.train.num_epochs=3", "--config.checkpoint.every_steps=1"]


def _env(cache: str) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
              JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              GLIBC_TUNABLES="glibc.malloc.check=0")


def _run(workdir: str, env: dict) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py")] + ARGS + [f"--workdir={workdir}"], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=900)


def _sha(output: str) -> str | None:
  match = re.search(r"final parameters sha256 (\w+)", output)
  return match.group(1) if match else None


def _saving(workdir: str) -> bool:
  """Whether Orbax has a save in flight (its temporary directory exists)."""
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any("tmp" in name for name in os.listdir(directory))


def _start_until_first_checkpoint(workdir: str, env: dict) -> subprocess.Popen:
  process = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py")] + ARGS + [f"--workdir={workdir}"],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  checkpoints = os.path.join(workdir, "checkpoints")
  while process.poll() is None and not (os.path.isdir(checkpoints) and
                                        any(name.isdigit() for name in os.listdir(checkpoints))):
    time.sleep(0.01)
  return process


def trial(index: int, root: str, env: dict, duration: float, rng: random.Random) -> dict:
  workdir = os.path.join(root, f"trial_{index}")
  process = _start_until_first_checkpoint(workdir, env)
  delay = rng.uniform(0.0, duration)
  time.sleep(delay)
  during_save = _saving(workdir)
  finished_first = process.poll() is not None
  process.send_signal(signal.SIGKILL)
  process.wait()
  resumed = _run(workdir, env)
  result = {"trial": index, "delay_s": round(delay, 3), "during_save": during_save,
            "finished_before_kill": finished_first, "resume_status": resumed.returncode, "sha": _sha(resumed.stdout),
            "error": "" if resumed.returncode == 0 else resumed.stderr.strip().splitlines()[-1:]}
  shutil.rmtree(workdir, ignore_errors=True)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--trials", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--max_minutes", type=float, default=None, help="stop starting trials after this long")
  parser.add_argument("--out", default=None, help="JSON with every trial")
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="kill_soak_")
  env = _env(os.path.join(root, "xla_cache"))
  start = time.time()
  reference = _run(os.path.join(root, "reference"), env)
  assert reference.returncode == 0, reference.stderr[-3000:]
  reference_sha = _sha(reference.stdout)
  warm = _start_until_first_checkpoint(os.path.join(root, "warm"), env)  # the compilation cache is warm now
  first = time.time()
  output, _ = warm.communicate()
  duration = time.time() - first  # what is left of a run once its first checkpoint is written
  assert _sha(output) == reference_sha
  print(f"reference sha256 {reference_sha}; a run trains {duration:.1f} s after its first checkpoint")
  rng = random.Random(args.seed)
  results = []
  for index in range(args.trials):
    if args.max_minutes and time.time() - start > 60 * args.max_minutes:
      break
    result = trial(index, root, env, 0.95 * duration, rng)
    result["survived"] = result["resume_status"] == 0 and result["sha"] == reference_sha
    results.append(result)
    print(json.dumps(result), flush=True)
  survived = sum(r["survived"] for r in results)
  summary = {"trials": len(results), "survived": survived, "lost": len(results) - survived,
             "killed_during_save": sum(r["during_save"] for r in results),
             "finished_before_kill": sum(r["finished_before_kill"] for r in results), "reference_sha": reference_sha}
  print(json.dumps(summary))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"summary": summary, "trials": results}, f, indent=1)
  shutil.rmtree(root, ignore_errors=True)
  sys.exit(0 if survived == len(results) else 1)


if __name__ == "__main__":
  main()
