"""Which library runs XLA:CPU's matmuls fastest on this CPU, against PyTorch's, and whether oneDNN's is safe.

  python benchmarks/cpu_dot_libraries.py                  # ConvNeXt-T's dot shapes, every library
  python benchmarks/cpu_dot_libraries.py --threads 1,2 --libraries ynnpack,onednn --torch

XLA picks the library for each dot from XLA_FLAGS, once per process, so each (library, thread
count) runs in a fresh process: ConvNeXt-T's matmul shapes at 96 px, batch 32 (forward x @ W,
weight gradient x^T dy in the form the model computes it on this backend, `models/matmul.py`,
input gradient dy W^T), median of 11 calls, GFLOP/s. `--torch` times `torch.mm` on the same
operands in the same process, each call alternated with XLA's (only such pairing tells a library gap
from a slow minute on a drifting VM; OMP_WAIT_POLICY=PASSIVE so that PyTorch's idle threads do
not spin through XLA's calls) and prints the ratio. The `onednn` probe then
compiles a dot whose operand is an elementwise product: XLA fuses that producer into its oneDNN
fusion, and where the installed jaxlib cannot compile such a fusion the process dies (SIGILL after
"partition compile failed"), which is why oneDNN is not a run-time choice here (docs/benchmarks.md:
no library was faster across these shapes on an AVX-512 Xeon).
"""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARIES = {  # XLA_FLAGS that send dots to each library (YNNPACK is JAX 0.10's default)
    "ynnpack": "",
    "onednn": "--xla_cpu_experimental_ynn_fusion_type=-individual_dot --xla_cpu_use_onednn=true "
              "--xla_cpu_experimental_onednn_fusion_type=dot",
    "eigen": "--xla_cpu_experimental_ynn_fusion_type=-individual_dot",
}
SHAPES = ((18432, 96, 384), (18432, 384, 96), (4608, 192, 768), (4608, 768, 192), (1152, 384, 1536),
          (1152, 1536, 384), (288, 768, 3072), (288, 3072, 768))  # (rows, in, out) of ConvNeXt-T's fc1/fc2

CHILD = r"""
import json, re, statistics, sys, time
sys.path.insert(0, sys.argv[2])
import jax, jax.numpy as jnp, numpy as np
from bloodcell_jax.models.matmul import matmul
shapes, with_torch = json.loads(sys.argv[1]), sys.argv[3] == "torch"
if with_torch:
  import torch
  torch.set_num_threads(int(sys.argv[4]) if sys.argv[4] else torch.get_num_threads())
def weight_grad(x, dy):
  return jax.vjp(lambda w: matmul(x, w), jnp.zeros((x.shape[1], dy.shape[1]), x.dtype))[1](dy)[0]
jax_calls = (jax.jit(lambda x, w, dy: x @ w), jax.jit(lambda x, w, dy: weight_grad(x, dy)),
             jax.jit(lambda x, w, dy: dy @ w.T))
torch_calls = (lambda x, w, dy: x @ w, lambda x, w, dy: x.t() @ dy, lambda x, w, dy: dy @ w.t())
def timed(f, args):
  start = time.perf_counter(); jax.block_until_ready(f(*args)); return time.perf_counter() - start
rng = np.random.default_rng(0)
for m, k, n in shapes:
  host = [rng.standard_normal(s, dtype=np.float32) for s in ((m, k), (k, n), (m, n))]
  jax_args = [jnp.asarray(a) for a in host]
  torch_args = [torch.from_numpy(a) for a in host] if with_torch else None
  seconds = []  # per kind: XLA's median, then PyTorch's (with --torch)
  for kind in range(3):
    jax_times, torch_times = [], []
    for _ in range(12):  # the first call of each compiles or warms up
      jax_times.append(timed(jax_calls[kind], jax_args))
      if with_torch:
        torch_times.append(timed(torch_calls[kind], torch_args))
    seconds += [statistics.median(jax_times[1:])] + ([statistics.median(torch_times[1:])] if with_torch else [])
  print(m, k, n, *seconds)
hlo = jax_calls[0].lower(*jax_args).compile().as_text()
print("library", ",".join(sorted(set(re.findall(r"__(ynn|xnn|onednn)_fusion", hlo)))) or "XLA dot (Eigen)")
"""

PROBE = "import jax, jax.numpy as jnp; a = jnp.ones((64, 64)); print(jax.jit(lambda a, b: (a * b) @ b)(a, a)[0, 0])"


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--threads", default="",
                      help="comma-separated XLA thread counts (PJRT_NPROC); default: all cores")
  parser.add_argument("--libraries", default=",".join(LIBRARIES), help=f"some of {', '.join(LIBRARIES)}")
  parser.add_argument("--torch", action="store_true",
                      help="also time torch.mm on the same operands, alternated with XLA's calls in the same process")
  return parser.parse_args()


def child_env(library: str, threads: str) -> dict:
  flags = f"{os.environ.get('XLA_FLAGS', '')} {LIBRARIES[library]}".strip()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, OMP_WAIT_POLICY="PASSIVE")
  if threads:
    env["PJRT_NPROC"] = threads
  return env


def main():
  args = parse_args()
  sys.path.insert(0, ROOT)
  from bloodcell_jax import cpu_info
  cpu = cpu_info.host()
  print(f"host CPU: {cpu.describe() if cpu else 'unknown'}")
  if args.torch and importlib.util.find_spec("torch") is None:
    sys.exit("--torch: PyTorch is not installed; install the README's dev requirements (requirements-dev.txt)")
  kinds = ("fwd", "wgrad", "igrad")
  header = "".join(f" {kind:>7}" + (f" {'torch':>7} {'ratio':>5}" if args.torch else "") for kind in kinds)
  print(f"{'library':>8} {'threads':>7} {'rows x in x out':>18}{header}  GFLOP/s")
  ratios = {}
  for threads in args.threads.split(",") if args.threads else [""]:
    for library in args.libraries.split(","):
      if library not in LIBRARIES:
        sys.exit(f"--libraries: unknown library {library!r} (one of {', '.join(LIBRARIES)})")
      result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(SHAPES), ROOT, "torch" if args.torch else "",
                               threads], env=child_env(library, threads), capture_output=True, text=True, timeout=1800)
      lines = result.stdout.split("\n")
      used = next((line.split(" ", 1)[1] for line in lines if line.startswith("library ")), "?")
      for line in lines:
        if re.match(r"\d+ \d+ \d+ ", line):
          m, k, n, *seconds = line.split()
          gflop = 2 * int(m) * int(k) * int(n) / 1e9
          cells = ""
          for kind_seconds in (zip(seconds[0::2], seconds[1::2]) if args.torch else zip(seconds)):
            ours, *theirs = map(float, kind_seconds)
            cells += f" {gflop / ours:7.1f}"
            if theirs:
              ratios.setdefault((library, threads), []).append((ours, theirs[0]))
              cells += f" {gflop / theirs[0]:7.1f} {theirs[0] / ours:5.2f}"
          print(f"{library:>8} {threads or 'all':>7} {f'{m}x{k}x{n}':>18}{cells}  ({used})")
      if result.returncode:
        print(f"{library:>8} {threads or 'all':>7} failed: exit status {result.returncode}: "
              f"{result.stderr.strip()[-200:]}")
  for (library, threads), times in ratios.items():  # (XLA's seconds, PyTorch's seconds) per dot
    speeds = [theirs / ours for ours, theirs in times]
    total = sum(theirs for _, theirs in times) / sum(ours for ours, _ in times)
    print(f"{library} at {threads or 'all'} threads / PyTorch: all {len(times)} dots together {total:.2f}x, "
          f"each {min(speeds):.2f}-{max(speeds):.2f}x, {sum(1 for v in speeds if v >= 1.0)} at least as fast")
  if "onednn" in args.libraries.split(","):
    probe = subprocess.run([sys.executable, "-c", PROBE], env=child_env("onednn", ""), capture_output=True, text=True,
                           timeout=300)
    verdict = "compiles and runs" if probe.returncode == 0 else (
        f"kills the process (exit status {probe.returncode}; {probe.stderr.strip()[-80:]!r})")
    print(f"oneDNN dot with a fused elementwise producer ((a * b) @ b): {verdict}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
