"""Command-line plumbing shared by main.py and the tools (`python -m bloodcell_jax.tools.<name>`,
`python -m bloodcell_jax.pretrained`): absl flags, positional arguments, `--help`, and bad input reported
as one `error: ...` line on stderr with exit status 2, never as a traceback.

Tools never define flags on the global `absl.flags.FLAGS`: main.py owns those (its config flags), and the
tools import one another (clean imports oversample) and are imported together by the tests, so flags on
one shared registry would clash or leak into each other's help. A tool does:

  FLAGS = flags.FlagValues()
  flags.DEFINE_string("data", None, "...", flag_values=FLAGS)

  def main(argv=None) -> int:
    return cli.run("python -m bloodcell_jax.tools.x", __doc__, FLAGS, argv, lambda: work(FLAGS.data))
"""

import difflib
import logging as std_logging
import os
import re
import sys

from absl import flags, logging

from bloodcell_jax.errors import UserInputError

HELP_ARGS = ("-h", "-help", "--help", "--helpshort", "--helpfull")
BAD_USAGE = 2  # the exit status of bad flags and of bad input, as main.py's


def _one_line(message) -> str:
  return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def error(message) -> int:
  """Prints `error: <message>` as one line on stderr; returns the exit status of bad input."""
  print(f"error: {_one_line(message)}", file=sys.stderr)
  return BAD_USAGE


def exit_status(run) -> int:
  """Runs a command-line entry point: 0, or 2 after one `error: ...` line for bad input."""
  try:
    run()
  except UserInputError as e:
    return error(e)
  return 0


def usage(prog: str, positionals=()) -> str:
  return " ".join([prog, *positionals, "[flags]"])


def help_text(prog: str, doc: str, flag_values: flags.FlagValues, positionals=()) -> str:
  """The usage line, the tool's docstring and its flags (absl's rendering, without the module headers)."""
  rendered = flag_values.get_help(include_special_flags=False).splitlines()
  flag_lines = [line for line in rendered if line.startswith(" ")]  # the module headers are not indented
  return "\n".join([f"usage: {usage(prog, positionals)}", "", (doc or "").strip(), "", "flags:", *flag_lines,
                    "  -h, --help: show this help and exit"]) + "\n"


def wants_help(argv) -> bool:
  """Whether a help argument comes before any `--` (after which everything is positional)."""
  argv = list(argv)
  flags_part = argv[:argv.index("--")] if "--" in argv else argv
  return any(arg in HELP_ARGS for arg in flags_part)


def parse(flag_values: flags.FlagValues, argv, positionals=()) -> list[str]:
  """Parses `argv` (no program name) into `flag_values`; returns the positional arguments.

  `positionals` names the expected ones, e.g. ("SOURCE",); a last name ending in "..." takes one or more.
  An unknown flag, a missing required flag, a value that does not parse or fails its validator, or the
  wrong number of positional arguments raise UserInputError.
  """
  flag_values.unparse_flags()  # back to the defaults: a second call in one process must not see the first's
  try:
    args = flag_values(["prog", *argv])[1:]
  except flags.Error as e:
    required = re.fullmatch(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.?", str(e))
    raise UserInputError(f"the flag --{required[1]} is required" if required else str(e)) from None
  names = list(positionals)
  variadic = bool(names) and names[-1].endswith("...")
  if len(args) < len(names):
    raise UserInputError(f"missing {' '.join(name.rstrip('.') for name in names[len(args):])}")
  if len(args) > len(names) and not variadic:
    raise UserInputError(f"unexpected argument{'s' if len(args) - len(names) > 1 else ''} "
                         f"{' '.join(repr(a) for a in args[len(names):])}")
  return args


def run(prog: str, doc: str, flag_values: flags.FlagValues, argv, body, positionals=()) -> int:
  """The whole entry point: `--help` -> help on stdout and 0; bad flags or positional arguments -> one
  `error: ...` line and 2; else `body(*positional arguments)` -> 0, or 2 if it raises UserInputError.

  `argv` excludes the program name; None means sys.argv[1:].
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  if wants_help(argv):
    print(help_text(prog, doc, flag_values, positionals), end="")
    return 0
  try:
    args = parse(flag_values, argv, positionals)
  except UserInputError as e:
    return error(f"{e} (usage: {usage(prog, positionals)}; --help lists the flags)")
  return exit_status(lambda: body(*args))


def main_flags_parser(flag_values: flags.FlagValues):
  """A `flags_parser` for absl's app.run over main.py's flags (its ml_collections `--config`): a bad
  flag, config file or config override is one `error:` line and exit status 2."""
  def parse_flags(argv: list[str]) -> list[str]:
    try:
      rest = flag_values(argv)
      if flag_values.config is not None:
        flag_values.config.keys()  # config_flags loads the file lazily: fail here, not in the middle of a mode
      return rest
    except Exception as e:  # ml_collections reports its errors as tracebacks, absl's may carry one
      sys.exit(error(_config_flag_error(argv, e)))
  return parse_flags


def _config_flag_error(argv: list[str], problem: Exception) -> str:
  """The config file that does not load, the override that names a field the config lacks (with the
  closest names it has), or absl's own message with the last line of a traceback it carries."""
  config_path = next((v for a, v in zip(argv, argv[1:] + [""]) if a == "--config"),
                     next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), ""))
  lines = [line for line in str(problem).strip().splitlines() if line.strip()] or [type(problem).__name__]
  if config_path and not os.path.exists(config_path.split(":")[0]):
    return f"--config {config_path}: no such file"
  if isinstance(problem, (AttributeError, KeyError)):
    for override in (a.split("=")[0] for a in argv if a.startswith("--config.")):
      path = override.removeprefix("--config.").split(".")
      missing = [i for i, name in enumerate(path) if re.search(rf"\b{re.escape(name)}\b", str(problem))]
      if missing:
        return f"{override}: the config has no field {path[missing[0]]!r}{_closest(path[:missing[0] + 1])}"
  if isinstance(problem, flags.Error):
    return lines[0] + (f" {lines[-1].strip()}" if len(lines) > 1 else "")
  return f"--config {config_path}: does not load ({type(problem).__name__}: {lines[0]})"


def _closest(path: list[str]) -> str:
  """'; closest: a, b' among the default config's fields beside path[-1], where there are close ones."""
  from bloodcell_jax.config.defaults import get_config  # the fields every config has
  node = get_config()
  for name in path[:-1]:
    if name not in node:
      return ""
    node = node[name]
  names = difflib.get_close_matches(path[-1], list(node.keys()), n=3, cutoff=0.6)
  return f" (closest: {', '.join(names)})" if names else ""


class _QuietLibraries(std_logging.Filter):
  """Keeps Orbax's per-save INFO chatter, and its notes on reading a checkpoint read-only, off the
  console; its other warnings and its errors still show."""

  BENIGN = ("read_only=True, setting", "Given directory is read only", "Metadata file does not exist")
  # A failed write is logged by each of Orbax's writer threads, with tracebacks, then raised where we
  # wait for it (checkpointing.RunCheckpoints), which reports it as one line.
  REPORTED = ("No space left on device", "RESOURCE_EXHAUSTED", "Save Finalize thread", "raised an exception",
              "Failed to run")

  def filter(self, record: std_logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    message = record.getMessage()
    if record.levelno >= std_logging.ERROR:
      return not any(r in message for r in self.REPORTED)
    return record.levelno >= std_logging.WARNING and not any(b in message for b in self.BENIGN)


def _without_closed_loop_noise(hook):
  """After a failed save Orbax closes its event loop while tensorstore still calls back into it; each
  callback reports "Event loop is closed" as an unraisable error with a traceback. The failure itself
  is reported as one line."""
  def unraisablehook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
      hook(unraisable)
  return unraisablehook


def quiet_library_logs() -> None:
  """Installs both filters: the console shows what the user needs, once."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
  sys.unraisablehook = _without_closed_loop_noise(sys.unraisablehook)
