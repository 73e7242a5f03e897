"""Which library runs XLA:CPU's matmuls fastest on this CPU, and whether oneDNN's is safe to use.

  python benchmarks/cpu_dot_libraries.py                  # ConvNeXt-T's dot shapes, every library
  python benchmarks/cpu_dot_libraries.py --threads 1,2 --libraries ynnpack,onednn

XLA picks the library for each dot from XLA_FLAGS, once per process, so each (library, thread
count) runs in a fresh process: ConvNeXt-T's matmul shapes at 96 px, batch 32 (forward x @ W,
weight gradient x^T dy, input gradient dy W^T), best of 5 calls, GFLOP/s. The `onednn` probe then
compiles a dot whose operand is an elementwise product: XLA fuses that producer into its oneDNN
fusion, and where the installed jaxlib cannot compile such a fusion the process dies (SIGILL after
"partition compile failed"), which is why oneDNN is not a run-time choice here (docs/benchmarks.md:
no library was faster across these shapes on an AVX-512 Xeon).
"""

import argparse
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
import json, re, sys, time
import jax, jax.numpy as jnp, numpy as np
shapes = json.loads(sys.argv[1])
def best(f, *args):
  f(*args).block_until_ready()
  times = []
  for _ in range(5):
    start = time.perf_counter(); f(*args).block_until_ready(); times.append(time.perf_counter() - start)
  return min(times)
rng = np.random.default_rng(0)
for m, k, n in shapes:
  x, w, dy = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((m, k), (k, n), (m, n)))
  gflop = 2 * m * k * n / 1e9
  forward = jax.jit(lambda x, w: x @ w)
  weight_grad = jax.jit(lambda x, dy: x.T @ dy)
  input_grad = jax.jit(lambda dy, w: dy @ w.T)
  calls = ((forward, x, w), (weight_grad, x, dy), (input_grad, dy, w))
  print(m, k, n, *(f"{gflop / best(f, a, b):.1f}" for f, a, b in calls))
hlo = forward.lower(x, w).compile().as_text()
print("library", ",".join(sorted(set(re.findall(r"__(ynn|xnn|onednn)_fusion", hlo)))) or "XLA dot (Eigen)")
"""

PROBE = "import jax, jax.numpy as jnp; a = jnp.ones((64, 64)); print(jax.jit(lambda a, b: (a * b) @ b)(a, a)[0, 0])"


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--threads", default="",
                      help="comma-separated XLA thread counts (PJRT_NPROC); default: all cores")
  parser.add_argument("--libraries", default=",".join(LIBRARIES), help=f"some of {', '.join(LIBRARIES)}")
  return parser.parse_args()


def child_env(library: str, threads: str) -> dict:
  flags = f"{os.environ.get('XLA_FLAGS', '')} {LIBRARIES[library]}".strip()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
  if threads:
    env["PJRT_NPROC"] = threads
  return env


def main():
  args = parse_args()
  sys.path.insert(0, ROOT)
  from bloodcell_jax import cpu_info
  cpu = cpu_info.host()
  print(f"host CPU: {cpu.describe() if cpu else 'unknown'}")
  print(f"{'library':>8} {'threads':>7} {'rows x in x out':>18} {'fwd':>7} {'wgrad':>7} {'igrad':>7}  GFLOP/s")
  for threads in args.threads.split(",") if args.threads else [""]:
    for library in args.libraries.split(","):
      if library not in LIBRARIES:
        sys.exit(f"--libraries: unknown library {library!r} (one of {', '.join(LIBRARIES)})")
      result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(SHAPES)], env=child_env(library, threads),
                              capture_output=True, text=True, timeout=1200)
      lines = result.stdout.split("\n")
      used = next((line.split(" ", 1)[1] for line in lines if line.startswith("library ")), "?")
      for line in lines:
        if re.match(r"\d+ \d+ \d+ ", line):
          m, k, n, *rates = line.split()
          print(f"{library:>8} {threads or 'all':>7} {f'{m}x{k}x{n}':>18} "
                f"{rates[0]:>7} {rates[1]:>7} {rates[2]:>7}  ({used})")
      if result.returncode:
        print(f"{library:>8} {threads or 'all':>7} failed: exit status {result.returncode}: "
              f"{result.stderr.strip()[-200:]}")
  if "onednn" in args.libraries.split(","):
    probe = subprocess.run([sys.executable, "-c", PROBE], env=child_env("onednn", ""), capture_output=True, text=True,
                           timeout=300)
    verdict = "compiles and runs" if probe.returncode == 0 else (
        f"kills the process (exit status {probe.returncode}; {probe.stderr.strip()[-80:]!r})")
    print(f"oneDNN dot with a fused elementwise producer ((a * b) @ b): {verdict}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
