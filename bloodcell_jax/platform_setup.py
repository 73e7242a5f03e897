"""Choose JAX's backend before JAX initialises, so a CPU-only machine starts quietly.

requirements.txt installs `jax[cuda12]`. On a machine without an NVIDIA driver the CUDA
plugin's initialisation fails and JAX logs a long traceback before falling back to the CPU.
When no driver is present and the user has not chosen a platform, we ask for the CPU
directly. A user's own JAX_PLATFORMS always wins.
"""

import glob
import importlib.util
import os


def nvidia_driver_present() -> bool:
  """True when the kernel exposes an NVIDIA driver (what the CUDA plugin needs)."""
  return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


def tpu_runtime_installed() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def select_backend() -> None:
  if os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME"):
    return
  if not nvidia_driver_present() and not tpu_runtime_installed():
    os.environ["JAX_PLATFORMS"] = "cpu"
