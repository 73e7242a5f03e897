"""One training process per run directory (per process index of a multi-host run).

Two copies of the same command, or a scheduler that restarts a job whose old copy still runs, would
otherwise both train and write checkpoints and metrics into one directory. The lock is an advisory
`flock` on `<workdir>/.lock` (process 0; `.lock-process-<i>` for the other processes of a multi-host
run, which share the directory legitimately), held for the life of the run and released by the kernel
when the process ends, kill -9 included, so no stale lock is ever left. The holder writes who it is
into the file, so a refused start can say whom it waits for. On network filesystems flock works where
the filesystem supports locks (NFSv4, Lustre with flock mounts); where it does not, the run starts
with a warning.
"""

import errno
import fcntl
import json
import os
import socket
import sys
import time

from absl import logging

from bloodcell_jax.errors import UserInputError


def lock_path(workdir: str, process_index: int = 0) -> str:
  return os.path.join(workdir, ".lock" if process_index == 0 else f".lock-process-{process_index}")


class RunLock:
  """`with RunLock(workdir, process_index):` holds the run directory; a second holder is refused with a
  UserInputError naming the first (host, PID, since when)."""

  def __init__(self, workdir: str, process_index: int = 0):
    self.path = lock_path(workdir, process_index)
    self.workdir = workdir
    self._fd = None

  def __enter__(self) -> "RunLock":
    try:
      os.makedirs(self.workdir, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise UserInputError(f"{self.workdir}: run directory is not writable ({e.strerror or e})") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read_holder(fd)
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
        raise UserInputError(f"{self.workdir}: another training run is using this run directory ({holder}); "
                             "wait for it to finish or stop it, or choose another --workdir") from None
      logging.warning("%s: the filesystem does not support locks (%s); nothing stops a second run from "
                      "writing here", self.path, e.strerror)
      return self
    self._fd = fd
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                              "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "command": " ".join(sys.argv)[:500]}).encode(), 0)
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor releases the flock; the file stays for the next holder
      self._fd = None


def _read_holder(fd: int) -> str:
  try:
    holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):
    holder = {}
  if not holder:
    return "holder not yet recorded"
  return f"PID {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
