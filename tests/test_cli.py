"""The tools' shared command-line plumbing (bloodcell_jax/cli.py): absl flags on each tool's own
FlagValues, positional arguments, --help, one `error:` line and exit status 2; and the real commands."""

import importlib
import os
import subprocess
import sys

import pytest
from absl import flags

from bloodcell_jax.errors import UserInputError
from bloodcell_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("bloodcell_jax.tools.clean", "bloodcell_jax.tools.compare", "bloodcell_jax.tools.download",
         "bloodcell_jax.tools.oversample", "bloodcell_jax.pretrained")


def _toy_flags() -> flags.FlagValues:
  flag_values = flags.FlagValues()
  flags.DEFINE_string("data", None, "Where the data is.", flag_values=flag_values)
  flags.DEFINE_integer("count", 3, "How many.", lower_bound=1, flag_values=flag_values)
  flags.DEFINE_bool("dry_run", False, "Only report.", flag_values=flag_values)
  flags.mark_flag_as_required("data", flag_values=flag_values)
  return flag_values


def _run(flag_values, argv, positionals=(), body=None):
  calls = []
  code = cli.run("python -m toy", "A toy tool.\n\nIt says why.", flag_values, argv,
                 body or (lambda *args: calls.append((args, flag_values.data, flag_values.count, flag_values.dry_run))),
                 positionals)
  return code, calls


def _one_error_line(capsys) -> str:
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
  return lines[0]


def test_flags_and_positionals_reach_the_body(capsys):
  flag_values = _toy_flags()
  assert _run(flag_values, ["a", "--data", "x", "--count=5", "b", "--dry_run"], ("FIRST", "REST..."))[1] == [
      (("a", "b"), "x", 5, True)]
  # A second call in the same process starts from the defaults, not from the first call's values.
  assert _run(flag_values, ["--data=y", "a", "b", "c"], ("FIRST", "REST..."))[1] == [(("a", "b", "c"), "y", 3, False)]
  # After `--` everything is positional, even what looks like a flag.
  assert _run(flag_values, ["--data=y", "--", "--help"], ("ARG",))[1] == [(("--help",), "y", 3, False)]
  assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, message", [
    (["--data=x", "--nope"], "Unknown command line flag 'nope'"),
    (["--data=x", "--count=many"], "--count=many"),
    (["--data=x", "--count=0"], "--count=0"),
    (["--data=x", "--dry_run=maybe"], "--dry_run=maybe"),
    (["--count=2"], "the flag --data is required"),
    (["--data"], "Missing value for flag --data"),
    (["--data=x", "a", "b"], "unexpected argument 'b'"),
    (["--data=x"], "missing SOURCE"),
])
def test_bad_flags_and_arguments_are_one_error_line_and_exit_status_2(capsys, argv, message):
  code, calls = _run(_toy_flags(), argv, ("SOURCE",))
  assert code == 2 and calls == []
  line = _one_error_line(capsys)
  assert message in line and "usage: python -m toy SOURCE [flags]" in line


def test_variadic_positionals_need_at_least_one(capsys):
  assert _run(_toy_flags(), ["--data=x"], ("RUN_DIR...",))[0] == 2
  assert "missing RUN_DIR " in _one_error_line(capsys)


@pytest.mark.parametrize("help_arg", ["--help", "-h", "--helpfull"])
def test_help_prints_usage_and_flags_and_exits_0(capsys, help_arg):
  code, calls = _run(_toy_flags(), ["--nope", help_arg], ("SOURCE",))  # help wins over bad or missing flags
  assert code == 0 and calls == []
  out = capsys.readouterr().out
  assert out.startswith("usage: python -m toy SOURCE [flags]\n\nA toy tool.\n\nIt says why.\n\nflags:\n")
  assert "  --data: Where the data is." in out and "  --[no]dry_run: Only report." in out
  assert "  -h, --help: show this help and exit" in out and "test_tools_cli.py:" not in out  # no module headers


def test_user_input_errors_of_the_body_are_one_line_and_other_errors_keep_their_traceback(capsys):
  def body():
    raise UserInputError("data.npz: broken\n  (truncated)")
  assert cli.exit_status(lambda: None) == 0
  assert _run(_toy_flags(), ["--data=x"], body=body)[0] == 2
  assert capsys.readouterr().err == "error: data.npz: broken (truncated)\n"

  def bug():
    raise RuntimeError("bug")
  with pytest.raises(RuntimeError):
    _run(_toy_flags(), ["--data=x"], body=bug)


def test_every_tool_imports_with_main_py_and_defines_no_global_flags():
  import main  # noqa: F401  (main.py's flags on absl's global FLAGS)
  global_modules = set(flags.FLAGS.flags_by_module_dict())
  for name in TOOLS:
    module = importlib.import_module(name + (".__main__" if name.endswith("pretrained") else ""))
    assert isinstance(module.FLAGS, flags.FlagValues) and module.FLAGS is not flags.FLAGS
    assert not any(m.endswith(module.__file__) or m == module.__name__ for m in global_modules)
  assert set(flags.FLAGS.flags_by_module_dict()) == global_modules


def _command(args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("tool", TOOLS)
def test_each_command_has_help_and_rejects_an_unknown_flag(tool):
  shown = _command([tool, "--help"])
  assert shown.returncode == 0 and shown.stdout.startswith(f"usage: python -m {tool} "), shown.stderr[-2000:]
  assert "\nflags:\n" in shown.stdout
  rejected = _command([tool, "--no_such_flag"])
  assert rejected.returncode == 2 and "Traceback" not in rejected.stderr
  assert rejected.stderr.strip().splitlines() == [rejected.stderr.strip()]
  assert rejected.stderr.startswith("error: Unknown command line flag 'no_such_flag'")


def test_real_commands_in_a_subprocess(tmp_path):
  output = tmp_path / "balanced.npz"
  done = _command(["bloodcell_jax.tools.oversample", "--data", "sample", "--target", "45", "--image_size=32",
                   "--output", str(output)])
  assert done.returncode == 0 and f"wrote {output}: 360 images (40 added)" in done.stdout, done.stderr[-3000:]
  cleaned = _command(["bloodcell_jax.tools.clean", f"--data={output}", "--dry_run", "--image_size", "32"])
  assert cleaned.returncode == 0 and "dry run: nothing written" in cleaned.stdout, cleaned.stderr[-3000:]
  assert sorted(os.listdir(tmp_path)) == ["balanced.npz"]
  note = _command(["bloodcell_jax.tools.download", "pbc"])
  assert note.returncode == 0 and "doi:10.17632/snkd93bnjr.1" in note.stdout
  wrong = _command(["bloodcell_jax.tools.download", "bloodmnist", "--size", "30", f"--dest={tmp_path}"])
  assert wrong.returncode == 2 and wrong.stderr.startswith("error: flag --size=30: --size must be one of 28, 64")
  assert sorted(os.listdir(tmp_path)) == ["balanced.npz"]
  no_runs = _command(["bloodcell_jax.tools.compare", str(tmp_path / "missing"), f"--output={tmp_path / 't'}"])
  assert no_runs.returncode == 2 and no_runs.stderr == f"error: {tmp_path / 'missing'}: no such run directory\n"
  missing = tmp_path / "missing.pth"
  no_source = _command(["bloodcell_jax.pretrained", str(missing), f"--out={tmp_path}"])
  assert no_source.returncode == 2 and no_source.stderr == f"error: {missing}: no such file or folder\n"
