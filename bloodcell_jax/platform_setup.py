"""Set up the process before JAX initialises: the backend, and for CPU training the host allocator.

Backend: requirements.txt installs `jax[cuda12]`. On a machine without an NVIDIA driver the CUDA
plugin's initialisation fails and JAX logs a long traceback before falling back to the CPU.
When no driver is present and the user has not chosen a platform, we ask for the CPU
directly. A user's own JAX_PLATFORMS always wins.

Allocator: XLA:CPU allocates every buffer of a step afresh and frees it when the step ends.
glibc serves large blocks (and threads' arenas) with mmap and unmaps them on free, so each
step faulted its whole working set back in as zeroed pages: for ConvNeXt-T at batch 32 on a
2-core CPU, 1.3 GB of page faults per step and a quarter of the CPU time spent in the kernel.
`keep_freed_host_memory` asks glibc to keep freed memory for reuse instead: one arena, no mmap,
no trimming (ConvNeXt-T train step 1.03 s -> 0.79 s there; docs/benchmarks.md). main.py calls it
for training and benchmarks on the CPU backend only, because it has costs elsewhere: the process
keeps its peak heap until it exits, and with one arena XLA's multi-threaded compiler contends for
it (compiling is about 10% slower; short eval/predict runs are mostly compiling). Importing the
package changes nothing. A user who sets glibc's malloc tunables (GLIBC_TUNABLES or MALLOC_*)
keeps them instead.
"""

import ctypes
import glob
import importlib.util
import os
import platform

# mallopt parameters, from glibc's <malloc.h>; a trim threshold of -1 turns trimming off.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


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


def wants_allocator_tuning() -> bool:
  """True on glibc Linux with the CPU backend chosen, unless the user tuned malloc already."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  if os.environ.get("JAX_PLATFORMS", os.environ.get("JAX_PLATFORM_NAME", "")).split(",")[0] != "cpu":
    return False
  return not any((name == "GLIBC_TUNABLES" or name.startswith("MALLOC_")) and value
                 for name, value in os.environ.items())


def keep_freed_host_memory() -> bool:
  """Make glibc reuse freed memory instead of returning it to the kernel; True when applied.

  Must run before JAX starts its backend (arenas that threads already have stay in use)."""
  if not wants_allocator_tuning():
    return False
  libc = ctypes.CDLL(None)
  return all(libc.mallopt(option, value) == 1 for option, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
