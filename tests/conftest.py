"""Shared fixtures. Four fake CPU devices, set before JAX loads, so pmap paths run everywhere."""

import os
import shutil
import sys
import tempfile


# Tests check results, not speed: with LLVM's optimisation off, XLA:CPU compiles the suite's many tiny
# steps in about half the time (a tiny ConvNeXt's init 12 s -> 2.4 s, its train step 21 s -> 8 s on
# 2 cores), and models this small run no slower. Runs compared bit for bit are all compiled this way.
def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test process with `devices` fake CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"


os.environ.setdefault("XLA_FLAGS", xla_flags(4))
# main.py's train mode makes glibc keep freed memory on CPUs (platform_setup), which pays off in long
# runs but slows compiling; the tests compile many tiny models in main.py subprocesses, so they ask
# for glibc's defaults (a no-op tunable). test_platform checks the setting itself.
os.environ.setdefault("GLIBC_TUNABLES", "glibc.malloc.check=0")
# The suite compiles the same tiny models again and again (main.py subprocesses that resume, evaluate,
# predict; tests that build the same steps): JAX's persistent cache, one per test session, shares them.
# pytest-xdist's workers inherit the controller's environment, so they share the controller's cache,
# and only the process that made it removes it.
_MAKES_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _MAKES_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="bloodcell_jax_tests_xla_cache_")
XLA_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import bloodcell_jax  # noqa: E402,F401  (selects the CPU backend quietly)
import pytest  # noqa: E402

PBC96 = os.path.join(ROOT, "..", "shared", "data", "pbc96")


@pytest.fixture
def pbc96_dir():
  if not os.path.isdir(PBC96):
    pytest.skip(f"real data not found at {os.path.normpath(PBC96)} (it sits beside the repository in CI)")
  return PBC96


def tiny_config(**overrides):
  """A ConvNeXt small enough to compile and train in seconds on 32x32 inputs."""
  from configs import default
  config = default.get_config()
  config.data.image_size = 32
  config.model.depths = (1, 1, 1, 1)
  config.model.dims = (8, 16, 24, 32)
  config.model.drop_path_rate = 0.0
  config.model.depthwise_impl = "xla"  # compiles faster; the shift-add form is tested against it
  config.train.batch_size = 16
  config.train.num_epochs = 2
  config.optim.learning_rate = 1e-3
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def init_params(model, image_size: int, seed: int):
  """Freshly initialised parameters of `model`, as a run starts from them."""
  from bloodcell_jax.steps import init_variables
  return init_variables(model, image_size, seed)["params"]


def restore_params(workdir: str, which: str = "best", weights: str = "raw"):
  """(parameters as host arrays, step) of a run's `best` or `last` checkpoint: the raw ones, or "ema"."""
  from bloodcell_jax.checkpointing import restore_variables
  variables, step = restore_variables(workdir, which, weights)
  return variables["params"], step


def pytest_sessionfinish(session, exitstatus):
  if _MAKES_CACHE:
    shutil.rmtree(XLA_CACHE, ignore_errors=True)


def subprocess_env(devices=1, **overrides):
  """The environment for a child process with `devices` fake CPU devices; None in overrides unsets."""
  env = dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu")
  for name, value in overrides.items():
    if value is None:
      env.pop(name, None)
    else:
      env[name] = value
  return env


def run_main(args, devices=1, timeout=600, **env_overrides):
  """Runs main.py in a subprocess with `devices` fake CPU devices; returns CompletedProcess."""
  import subprocess
  env = subprocess_env(devices, **env_overrides)
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py")] + list(args), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
