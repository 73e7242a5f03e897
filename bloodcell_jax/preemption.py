"""Turns SIGTERM (preemption) and SIGINT (Ctrl-C) into a request to stop after the current step.

The training loop polls `requested` after each step, writes a checkpoint and exits cleanly. A
second Ctrl-C restores Python's default behaviour, so an impatient user can still abort at once.
"""

import signal
import threading


class StopRequest:
  """Context manager; `requested` is the signal's name once one has arrived, else None."""

  def __init__(self):
    self.requested: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    self.requested = signal.Signals(signum).name
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():  # signals can only be caught there
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
