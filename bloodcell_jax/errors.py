"""Errors a user can fix: reported as one line and exit status 2, never as a traceback."""


class UserInputError(Exception):
  """Bad data, a bad config value or a bad path; the message names the file and the problem."""

  exit_code = 2


class TrainingDiverged(Exception):
  """The loss became NaN or inf; the message names the epoch and step. Reported in one line."""

  exit_code = 1
