"""main.py with an injected failing writer: Orbax's CheckpointManager.save raises ENOSPC from its
FAIL_SAVE_AT-th call on, as a full disk makes it do, without filling a disk.

  FAIL_SAVE_AT=4 python tests/failing_writer.py --config ... --workdir ...
"""

import errno
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import bloodcell_jax  # noqa: E402,F401  (selects the JAX backend before JAX loads)
import orbax.checkpoint as ocp  # noqa: E402

_save = ocp.CheckpointManager.save
_calls = [0]


def failing_save(self, step, *args, **kwargs):
  _calls[0] += 1
  if _calls[0] >= int(os.environ["FAIL_SAVE_AT"]):
    raise OSError(errno.ENOSPC, "No space left on device")
  return _save(self, step, *args, **kwargs)


ocp.CheckpointManager.save = failing_save
sys.argv = [os.path.join(ROOT, "main.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
