"""The persistent compilation cache: where main.py keeps it, and that a rerun compiles nothing."""

import os

from bloodcell_jax import compilation_cache
from conftest import run_main


def test_directory_follows_the_backend_the_setting_and_the_process():
  where = compilation_cache.directory_for
  assert where("auto", "/runs/a", "gpu") == "/runs/a/xla_cache"
  assert where("auto", "/runs/a", "tpu") == "/runs/a/xla_cache"
  assert where("auto", "/runs/a", "cpu") is None  # XLA:CPU rejects its own entries on many Intel CPUs
  assert where("none", "/runs/a", "gpu") is None
  assert where("/cache", "/runs/a", "cpu") == "/cache"
  assert where("cache", "/runs/a", "cpu") == os.path.join(os.getcwd(), "cache")
  assert where("auto", "/runs/a", "gpu", process_index=3, process_count=4) == "/runs/a/xla_cache/process_3"


def test_an_unwritable_cache_directory_is_one_line_before_anything_runs(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = run_main(["--config", "configs/quickstart.py", f"--workdir={tmp_path / 'run'}",
                     f"--compilation_cache={blocker / 'xla'}"], JAX_COMPILATION_CACHE_DIR=None)
  assert result.returncode == 2 and f"error: --compilation_cache: cannot write to {blocker / 'xla'}" in result.stderr
  assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_a_rerun_of_the_same_command_loads_every_step_instead_of_compiling(tmp_path):
  """What a resume after preemption does: main.py's --compilation_cache, no JAX_COMPILATION_CACHE_DIR."""
  cache = str(tmp_path / "xla")
  args = ["--config", "configs/quickstart.py", "--config.data.image_size=32", "--config.model.depths=(1,1,1,1)",
          "--config.model.dims=(8,16,24,32)", "--config.train.batch_size=32", "--config.train.num_epochs=1",
          "--config.eval.report=False", f"--workdir={tmp_path / 'run'}", f"--compilation_cache={cache}"]
  env = {"JAX_COMPILATION_CACHE_DIR": None, "JAX_DEBUG_LOG_MODULES": "jax._src.compiler"}
  first = run_main(args, **env)
  assert first.returncode == 0, first.stderr[-3000:]
  assert f"compiled steps are cached in {cache}" in first.stderr
  assert any(name.endswith("-cache") for name in os.listdir(cache))
  again = run_main(args + ["--config.restart=True"], **env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "PERSISTENT COMPILATION CACHE MISS" not in again.stderr
  assert again.stderr.count("Persistent compilation cache hit") >= 3  # train step, eval step, init at least
