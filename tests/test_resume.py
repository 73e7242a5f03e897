"""Resume after SIGKILL, SIGTERM, damaged checkpoints and a change of device count, as subprocesses."""

import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bloodcell_jax import checkpointing
from bloodcell_jax.errors import UserInputError
from conftest import ROOT, restore_params, run_main, subprocess_env

# 256 training images of the bundled sample, 16 steps per epoch, a checkpoint every 3 steps (10 over the
# run); the weight average is part of the state that must resume exactly.
ARGS = ["--config", "configs/quickstart.py", "--config.eval.report=False", "--config.ema.decay=0.9",
        "--config.data.image_size=48", "--config.model.depths=(1,1,1,1)",
        "--config.model.dims=(8,16,24,32)", "--config.train.batch_size=16", "--config.train.num_epochs=2",
        "--config.checkpoint.every_steps=3", "--config.model.drop_path_rate=0.1"]


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  for row in rows:
    row.pop("time_s")
  return rows


def _assert_same_params(a, b):
  """The raw weights and their moving average are bit-identical."""
  for weights in ("raw", "ema"):
    va, _ = checkpointing.restore_variables(a, "last", weights)
    vb, _ = checkpointing.restore_variables(b, "last", weights)
    assert jax.tree.structure(va) == jax.tree.structure(vb)
    for x, y in zip(jax.tree.leaves(va), jax.tree.leaves(vb)):
      np.testing.assert_array_equal(x, y)


def _start(args, workdir, devices=2, log_path=None):
  env = subprocess_env(devices)
  log = open(log_path or os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".log"), "w")
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py")] + args + [f"--workdir={workdir}"],
                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_for_checkpoint(process, workdir, timeout=300):
  directory = os.path.join(workdir, checkpointing.LAST_DIR)
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory)):
      return
    assert process.poll() is None, "the run ended before writing a checkpoint"
    time.sleep(0.02)
  raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run on 2 devices."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  result = run_main(ARGS + [f"--workdir={workdir}"], devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_sigkill_mid_run_then_resume_is_bit_identical(reference, tmp_path):
  workdir = str(tmp_path / "run")
  process = _start(ARGS, workdir)
  _wait_for_checkpoint(process, workdir)
  time.sleep(random.Random(0).uniform(0.0, 0.3))
  assert process.poll() is None, "the run finished before it could be killed"
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL
  resumed = run_main(ARGS + [f"--workdir={workdir}"], devices=2)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from" in resumed.stderr
  _assert_same_params(reference, workdir)
  assert _rows(workdir) == _rows(reference)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_checkpoints_and_exits_zero_then_resumes(reference, tmp_path, signum):
  workdir = str(tmp_path / "run")
  process = _start(ARGS, workdir)
  _wait_for_checkpoint(process, workdir)
  process.send_signal(signum)
  assert process.wait(timeout=120) == 0
  with open(str(tmp_path / "run.log")) as f:
    log = f.read()
  assert f"stopped by {signal.Signals(signum).name} at step" in log and "run the same command to resume" in log
  resumed = run_main(ARGS + [f"--workdir={workdir}"], devices=2)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  _assert_same_params(reference, workdir)
  assert _rows(workdir) == _rows(reference)


def test_damaged_checkpoints_fall_back_then_refuse_then_restart(reference, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert len(steps) == 2  # checkpoint.keep
  newest = os.path.join(workdir, "checkpoints", str(steps[-1]), "state")
  for root, _, files in os.walk(newest):  # truncate every data file of the newest checkpoint
    for name in files:
      if "metadata" not in name.lower():
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(3)
  more = ARGS[:-3] + ["--config.train.num_epochs=3", "--config.checkpoint.every_steps=3",
                      "--config.model.drop_path_rate=0.1"]
  result = run_main(more + [f"--workdir={workdir}"], devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"checkpoint {steps[-1]} in {workdir} is damaged" in result.stderr
  assert f"resumed from {workdir}" in result.stderr
  assert [r["epoch"] for r in _rows(workdir)] == [0, 1, 2]

  for sub in ("checkpoints", "best"):  # now damage all of them, the best one too (it would be resumed from)
    for step in os.listdir(os.path.join(workdir, sub)):
      shutil.rmtree(os.path.join(workdir, sub, step, "meta"), ignore_errors=True)
  refused = run_main(more + [f"--workdir={workdir}"], devices=2)
  assert refused.returncode == 2
  assert "no intact checkpoint" in refused.stderr and "--config.restart=True" in refused.stderr
  restarted = run_main(more + [f"--workdir={workdir}", "--config.restart=True", "--config.train.num_epochs=1"],
                       devices=2)
  assert restarted.returncode == 0, restarted.stderr[-3000:]
  assert [d for d in os.listdir(workdir) if d.startswith("replaced-")]
  assert [r["epoch"] for r in _rows(workdir)] == [0]


def test_the_run_serves_its_weight_average_and_refuses_to_resume_without_it(reference, tmp_path):
  served, step = checkpointing.restore_variables(reference, "best")
  average, _ = checkpointing.restore_variables(reference, "best", "ema")
  raw, _ = checkpointing.restore_variables(reference, "best", "raw")
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(served), jax.tree.leaves(average)))
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(served), jax.tree.leaves(raw)))
  with open(os.path.join(reference, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert all(0.0 <= row["val_ema"]["accuracy"] <= 1.0 for row in rows)
  best = max(rows, key=lambda row: row["val_ema"]["balanced_accuracy"])  # the monitor, on the served weights
  assert best["step"] == step
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  refused = run_main(ARGS + [f"--workdir={workdir}", "--config.ema.decay=0"], devices=2)
  assert refused.returncode == 2
  assert "holds checkpoints trained with a weight average" in refused.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("first, second", [(4, 1)])  # host arrays restored onto any count; 1 -> 4 is the same path
def test_checkpoint_moves_between_device_counts(tmp_path, first, second):
  workdir = str(tmp_path / "run")
  args = ARGS[:-3] + ["--config.train.num_epochs=1", "--config.model.drop_path_rate=0.0"]
  assert run_main(args + [f"--workdir={workdir}"], devices=first).returncode == 0
  args[args.index("--config.train.num_epochs=1")] = "--config.train.num_epochs=2"
  result = run_main(args + [f"--workdir={workdir}"], devices=second)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"devices: {second} x" in result.stderr
  rows = _rows(workdir)
  assert [r["epoch"] for r in rows] == [0, 1] and rows[1]["step"] == 32
  assert rows[1]["train"]["loss"] < rows[0]["train"]["loss"]
  with open(os.path.join(workdir, "config_changes.jsonl")) as f:
    assert json.loads(f.readline())["changes"] == {"train.num_epochs": [1, 2]}


def test_unwritable_workdir_and_full_disk_fail_before_training(tmp_path, monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  result = run_main(ARGS + [f"--workdir={blocker / 'run'}"])
  assert result.returncode == 2 and "run directory is not writable" in result.stderr
  assert "Traceback" not in result.stderr

  class Usage:
    free = 10 * 2**20
  monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: Usage)
  with pytest.raises(UserInputError, match=r"only 10 MiB free on its disk; checkpoints need about 400 MiB"):
    checkpointing.preflight(str(tmp_path / "ok"), 100 * 2**20, keep=2)


def _sha(output: str) -> str:
  match = re.search(r"final parameters sha256 (\w+)", output)
  assert match, output[-3000:]
  return match.group(1)


@pytest.fixture(scope="module")
def reference_sha(reference):
  """The final parameters' fingerprint of the uninterrupted run, as main.py prints it."""
  from bloodcell_jax.train import params_digest
  params, _ = restore_params(reference, "last")
  return params_digest(params)


def _data_files(checkpoint_dir):
  return sorted(os.path.join(root, name) for root, _, files in os.walk(os.path.join(checkpoint_dir, "state"))
                for name in files if os.sep + "d" + os.sep in os.path.join(root, name))


def _flip_bit(path):
  with open(path, "r+b") as f:
    size = os.path.getsize(path)
    f.seek(size // 2)
    byte = f.read(1)
    f.seek(size // 2)
    f.write(bytes([byte[0] ^ 0x04]))


def test_damaged_newest_checkpoint_is_refused_by_eval_and_skipped_by_resume(reference, reference_sha, tmp_path):
  """A flipped bit in the newest checkpoint, which Orbax restores without an error: verify says so, eval
  of it is refused naming the intact ones, and the resumed run ends with the uninterrupted run's
  parameters (it goes back to the previous checkpoint and trains the same step again). A checkpoint
  that lost its manifest is damaged too, not taken for one written before manifests existed."""
  workdir, lost = str(tmp_path / "run"), str(tmp_path / "lost_manifest")
  for copy in (workdir, lost):
    shutil.copytree(reference, copy)
    shutil.rmtree(os.path.join(copy, "best"))  # the best copy of the last epoch would stand in for it
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  _flip_bit(max(_data_files(os.path.join(workdir, "checkpoints", str(steps[-1]))), key=os.path.getsize))
  shutil.rmtree(os.path.join(lost, "checkpoints", str(steps[-1]), "manifest"))

  for copy, reason in ((workdir, "does not match its digest"), (lost, "its manifest is missing")):
    verify = run_main(["--mode=verify", f"--workdir={copy}"])
    assert verify.returncode == 1, verify.stderr[-2000:]
    assert f"the newest checkpoint, step {steps[-1]} (last), is damaged; training would resume from step " \
        f"{steps[-2]}" in verify.stdout and reason in verify.stdout, verify.stdout
  evaluated = run_main(["--mode=eval", f"--workdir={workdir}", "--checkpoint=last"])
  assert evaluated.returncode == 2 and "Traceback" not in evaluated.stderr, evaluated.stderr[-2000:]
  assert f"the 'last' checkpoint, step {steps[-1]} (last), is damaged" in evaluated.stderr
  assert f"intact: step {steps[-2]} (last)" in evaluated.stderr

  resumed = run_main(ARGS + [f"--workdir={workdir}"], devices=2)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"checkpoint {steps[-1]} in {workdir} is damaged" in resumed.stderr
  assert _sha(resumed.stdout) == reference_sha
  assert _rows(workdir) == _rows(reference)


def test_injected_write_failure_is_one_line_then_resume_is_bit_identical(reference, reference_sha, tmp_path):
  """Orbax's save raises ENOSPC from the 4th save on (tests/failing_writer.py): exit status 3, one
  line naming the directory and the checkpoint to resume from; the rerun ends as the reference."""
  workdir = str(tmp_path / "run")
  env = subprocess_env(2, FAIL_SAVE_AT="4")
  failed = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "failing_writer.py")] + ARGS +
                          [f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert failed.returncode == 3, failed.stderr[-3000:]
  errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
  assert f"error: {workdir}: disk full while writing the checkpoint of step 12" in errors[0]
  assert "the newest checkpoint to resume from is step 9 (last)" in errors[0]
  resumed = run_main(ARGS + [f"--workdir={workdir}"], devices=2)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert _sha(resumed.stdout) == reference_sha
  assert _rows(workdir) == _rows(reference)


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 24 MiB tmpfs (root only; skipped where the machine does not allow mounts)."""
  mount = tmp_path / "tmpfs"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here")
  yield str(mount)
  subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_on_a_real_filesystem_then_resume_is_bit_identical(reference, reference_sha, small_tmpfs, tmp_path):
  workdir = os.path.join(small_tmpfs, "run")
  log_path = str(tmp_path / "run.log")  # not on the disk that fills up
  process = _start(ARGS, workdir, log_path=log_path)
  _wait_for_checkpoint(process, workdir)
  with open(os.path.join(small_tmpfs, "filler"), "wb") as f:  # everything that is left
    try:
      while True:
        f.write(b"\0" * 2**20)
        f.flush()
    except OSError:
      pass
  assert process.wait(timeout=300) == 3
  with open(log_path) as f:
    log = f.read()
  errors = [line for line in log.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in log, log[-3000:]
  assert f"error: {workdir}: disk full while writing the checkpoint of step" in errors[0]
  assert "free space and run the same command to resume" in errors[0]
  os.remove(os.path.join(small_tmpfs, "filler"))
  resumed = run_main(ARGS + [f"--workdir={workdir}"], devices=2)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert not glob.glob(os.path.join(workdir, "*", checkpointing.TMP_PATTERN))
  assert _sha(resumed.stdout) == reference_sha
  assert _rows(workdir) == _rows(reference)


def test_preflight_counts_only_what_the_run_adds(tmp_path, monkeypatch):
  """keep=2: two last checkpoints and the best are there, so a resume adds one (the save in flight);
  a partial save left by a kill takes no place once the owner has removed it."""
  workdir = tmp_path / "run"
  for sub in ("checkpoints/6", "checkpoints/9", "best/6", "checkpoints/12.orbax-checkpoint-tmp-1/state"):
    os.makedirs(workdir / sub)

  class Usage:
    free = 150 * 2**20
  monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: Usage)
  checkpointing.preflight(str(workdir), 100 * 2**20, keep=2)  # needs 1 x 100 MiB
  shutil.rmtree(workdir / "best")
  with pytest.raises(UserInputError, match=r"checkpoints need about 200 MiB more \(2 x 100.0 MiB\)"):
    checkpointing.preflight(str(workdir), 100 * 2**20, keep=2)
  assert checkpointing.remove_partial_saves(str(workdir)) == [str(workdir / "checkpoints/12.orbax-checkpoint-tmp-1")]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["6", "9"]


def test_sigkill_during_saves_three_times_then_resume_is_bit_identical(reference, reference_sha, tmp_path):
  """A checkpoint after every step; each of three runs is killed while Orbax has a save in flight
  (its temporary directory exists), at a random point of it; the fourth run finishes. While the first
  runs, a second start on the same workdir is refused at once, naming it; kill -9 leaves no lock."""
  workdir = str(tmp_path / "run")
  args = ARGS + ["--config.checkpoint.every_steps=1"]
  rng = random.Random(1)
  in_flight = 0
  for attempt in range(3):
    partial = os.path.join(workdir, "*", checkpointing.TMP_PATTERN)
    process = _start(args, workdir)
    _wait_for_checkpoint(process, workdir)
    if attempt == 0:
      second = run_main(args + [f"--workdir={workdir}"], devices=2)
      errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
      assert second.returncode == 2 and len(errors) == 1, second.stderr[-2000:]
      assert f"another training run is using this run directory (PID {process.pid} on " in errors[0]
      assert process.poll() is None, "the first run must go on"
    deadline = time.time() + 120
    while glob.glob(partial) and time.time() < deadline:  # the previous kill's, until the new run removes it
      time.sleep(0.01)
    while time.time() < deadline and process.poll() is None:
      if glob.glob(partial):
        time.sleep(rng.uniform(0.0, 0.02))
        in_flight += 1
        break
      time.sleep(0.002)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert in_flight >= 2  # the kills landed while a save was being written
  resumed = run_main(args + [f"--workdir={workdir}"], devices=2)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert _sha(resumed.stdout) == reference_sha
  assert _rows(workdir) == _rows(reference)
