"""Two processes on this machine train together through jax.distributed (CPU collectives: gloo)."""

import json
import os
import re
import socket
import subprocess
import sys

from conftest import ROOT, XLA_CACHE, run_main, subprocess_env

ARGS = ["--config", "configs/quickstart.py", "--config.eval.report=False",
        "--config.data.image_size=32", "--config.model.depths=(1,1,1,1)",
        "--config.model.dims=(8,16,24,32)", "--config.train.batch_size=16", "--config.model.drop_path_rate=0.0",
        # AdamW, not Lion, for the comparison with one process: sign(update) amplifies rounding.
        "--config.optim.name=adamw"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(args, workdir):
  port = _free_port()
  processes, logs = [], []
  for pid in range(2):
    # A cache directory per process, as main.py's own default gives them: JAX writes entries unlocked.
    env = subprocess_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                         JAX_PROCESS_ID=str(pid), JAX_COMPILATION_CACHE_DIR=os.path.join(XLA_CACHE, f"process_{pid}"))
    log = open(f"{workdir}.p{pid}.log", "w+")
    logs.append(log)
    processes.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py")] + args +
                                      [f"--workdir={workdir}"], cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
  codes = [p.wait(timeout=600) for p in processes]
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  return outputs


def _digest(output):
  return re.search(r"final parameters sha256 (\w+)", output).group(1)


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_two_processes_train_together_save_once_and_resume(tmp_path):
  workdir = str(tmp_path / "run")
  outputs = _run_two_processes(ARGS + ["--config.train.num_epochs=1"], workdir)
  assert "process 0: finished epoch 1" in outputs[0] and "process 1: finished epoch 1" in outputs[1]
  assert _digest(outputs[0]) == _digest(outputs[1])  # the processes hold the same parameters
  assert [r["epoch"] for r in _rows(workdir)] == [0]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["16"]

  outputs = _run_two_processes(ARGS + ["--config.train.num_epochs=2"], workdir)
  assert "resumed from" in outputs[0]
  assert _digest(outputs[0]) == _digest(outputs[1])
  rows = _rows(workdir)
  assert [r["epoch"] for r in rows] == [0, 1]

  # One process with the same 4 devices in all computes the same first epoch.
  single = str(tmp_path / "single")
  result = run_main(ARGS + ["--config.train.num_epochs=1", f"--workdir={single}"], devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  (a,), (b,) = rows[:1], _rows(single)
  for split in ("train", "val"):
    assert abs(a[split]["loss"] - b[split]["loss"]) < 1e-5
    assert a[split]["accuracy"] == b[split]["accuracy"]
