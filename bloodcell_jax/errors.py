"""Errors a user can fix: reported as one line and exit status 2, never as a traceback."""


class UserInputError(Exception):
  """Bad data, a bad config value or a bad path; the message names the file and the problem."""

  exit_code = 2
