"""A persistent cache of compiled steps: a restarted run loads them instead of compiling again.

A resume after preemption, and eval, predict or export of a trained run, compile the functions the
first run compiled already: on an H100 17 s for the ConvNeXt-T train step and 72 s with the heavy
augmentation policy (docs/benchmarks.md). JAX can keep executables on disk, keyed by the program,
the device, the XLA flags and the versions; main.py keeps them in `<workdir>/xla_cache`.

By default only on GPUs and TPUs. XLA:CPU checks a cached executable against the host's CPU
features, and on many Intel CPUs that check rejects every entry (jax-ml/jax#38445): each load
would log an error and compile anyway. `--compilation_cache=DIR` asks for a cache on any backend.
The benchmark mode never reads one: compile time is one of its figures.
"""

import os

import jax

from bloodcell_jax.errors import UserInputError

AUTO, OFF = "auto", "none"
ENVIRONMENT_VARIABLE = "JAX_COMPILATION_CACHE_DIR"


def directory_for(setting: str, workdir: str, platform: str, process_index: int = 0,
                  process_count: int = 1) -> str | None:
  """The directory this process should cache in under `setting` (auto, none or a path), or None."""
  if setting == OFF or (setting == AUTO and platform == "cpu"):
    return None
  directory = os.path.join(workdir, "xla_cache") if setting == AUTO else os.path.abspath(os.path.expanduser(setting))
  if process_count > 1:
    # JAX writes entries without a lock; processes sharing a workdir on a network filesystem
    # would write the same files at once.
    directory = os.path.join(directory, f"process_{process_index}")
  return directory


def enable(setting: str, workdir: str) -> str | None:
  """Caches compiled functions per `setting`; returns the directory in use, or None.

  A JAX_COMPILATION_CACHE_DIR the user set wins (JAX reads it itself). Call before the first
  compilation (JAX decides once whether a process uses a cache) and after jax.distributed
  has started (the directory depends on the process index).
  """
  if os.environ.get(ENVIRONMENT_VARIABLE):
    return os.environ[ENVIRONMENT_VARIABLE]
  directory = directory_for(setting, workdir, jax.default_backend(), jax.process_index(), jax.process_count())
  if directory is None:
    return None
  try:
    os.makedirs(directory, exist_ok=True)
    writable = os.access(directory, os.W_OK)
  except OSError:
    writable = False
  if not writable:
    if setting == AUTO:  # a read-only run directory (eval of a shared model): compile as usual
      return None
    raise UserInputError(f"--compilation_cache: cannot write to {directory}")
  jax.config.update("jax_compilation_cache_dir", directory)
  return directory


def disable() -> None:
  """No persistent cache in this process, whatever the environment says (for timing compiles)."""
  jax.config.update("jax_enable_compilation_cache", False)
