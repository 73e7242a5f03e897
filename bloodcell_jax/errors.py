"""Errors reported as one line and a non-zero exit status, never as a traceback."""


class UserInputError(Exception):
  """Bad data, a bad config value or a bad path; the message names the file and the problem."""

  exit_code = 2


class RunFailure(Exception):
  """Training cannot go on (diverged, disk full); the message says what is kept and what to do."""

  exit_code = 1


class TrainingDiverged(RunFailure):
  """The loss became NaN or inf; the message names the step."""


class CheckpointWriteError(RunFailure):
  """A checkpoint could not be written; earlier checkpoints are untouched."""


class DiskFull(CheckpointWriteError):
  """The disk filled up during a save: a distinct status, as the remedy (free space, resume) is."""

  exit_code = 3

