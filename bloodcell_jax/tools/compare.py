"""Compares training runs in one table (Markdown and CSV), like the report's Table 1.

  python -m bloodcell_jax.tools.compare checkpoints/cnn checkpoints/cpu_small --test=bloodmnist_test --output docs/results

Each run directory is read, not re-evaluated: config.json (model, image size), run.json
(parameters, machine), metrics.jsonl (epochs, training time, the best epoch's train accuracy) and
report/<name>/metrics.json (validation and test figures of the best checkpoint, written at the end
of training and by `--mode=eval`; "val corrupted accuracy" is the mean over the corruptions of
`--mode=eval --corruptions=...`). Figures a run lacks are shown as "n/a".
"""

import csv
import io
import json
import os
import sys

from absl import flags
from ml_collections import ConfigDict

from bloodcell_jax.atomic_files import write_text_atomic
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.inference import REPORT_DIR, describe_model
from bloodcell_jax.report import load_history
from bloodcell_jax import cli

COLUMNS = ("run", "model", "parameters", "image size", "epochs", "train accuracy", "val accuracy",
           "val balanced accuracy", "val precision", "val recall", "val AUC", "val accuracy (TTA)",
           "val corrupted accuracy", "test accuracy", "test accuracy (TTA)", "training time", "device")


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserInputError(f"{path}: not valid JSON ({e})") from None


def _minutes(seconds: float) -> str:
  return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _num(value, digits: int = 4) -> str:
  return "n/a" if value is None else f"{value:.{digits}f}"


def run_row(workdir: str, test: str | None) -> dict:
  """One table row for the run in `workdir`."""
  config = _read_json(os.path.join(workdir, "config.json"))
  if config is None:
    raise UserInputError(f"{workdir}: no config.json; not the run directory of a training run")
  info = _read_json(os.path.join(workdir, "run.json")) or {}
  history = load_history(workdir)
  validation = _read_json(os.path.join(workdir, REPORT_DIR, "validation", "metrics.json")) or {}
  best = next((row for row in history if row["step"] == validation.get("step")), None)
  if best is None and history:  # no report yet: the best epoch by the run's monitored metric
    monitor = config["train"]["monitor_metric"]
    best = max(history, key=lambda row: -row["val"]["loss"] if monitor == "loss" else row["val"][monitor] or 0)
  val = validation or (best or {}).get("val", {})
  test_metrics = _read_json(os.path.join(workdir, REPORT_DIR, test, "metrics.json")) if test else None
  sessions = info.get("sessions", [])
  devices = sorted({f"{s['local_devices'] * s['processes']} x {s['device_kind']}"
                    + (f" ({s['host_cpu']}, {s['cpu_count']} cores)" if s["platform"] == "cpu" else "")
                    for s in sessions})
  num_params = info.get("num_params", validation.get("num_params"))
  return {
      "run": os.path.basename(os.path.normpath(workdir)),
      "model": describe_model(ConfigDict(config)),
      "parameters": "n/a" if num_params is None else f"{num_params / 1e6:.2f}M",
      "image size": f"{config['data']['image_size']} px",
      "epochs": str(len(history)) if history else "n/a",
      "train accuracy": _num((best or {}).get("train", {}).get("accuracy")),
      "val accuracy": _num(val.get("accuracy")),
      "val balanced accuracy": _num(val.get("balanced_accuracy")),
      "val precision": _num(val.get("macro_precision")),
      "val recall": _num(val.get("macro_recall")),
      "val AUC": _num(val.get("macro_auc")),
      "val accuracy (TTA)": _num(validation.get("tta", {}).get("accuracy")),
      "val corrupted accuracy": _num(validation.get("robustness", {}).get("mean_corrupted_accuracy")),
      "test accuracy": _num((test_metrics or {}).get("accuracy")),
      "test accuracy (TTA)": _num((test_metrics or {}).get("tta", {}).get("accuracy")),
      "training time": _minutes(sum(row["time_s"] for row in history)) if history else "n/a",
      "device": "; ".join(devices) or "n/a",
  }


def markdown_table(rows: list[dict]) -> str:
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if c in ("run", "model", "device") else "---:"
                                                               for c in COLUMNS) + "|"]
  lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def csv_table(rows: list[dict]) -> str:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def compare(workdirs: list[str], output: str, test: str | None = None) -> list[dict]:
  """Writes `<output>.md` and `<output>.csv`; returns the rows."""
  if not workdirs:
    raise UserInputError("give at least one run directory")
  for workdir in workdirs:
    if not os.path.isdir(workdir):
      raise UserInputError(f"{workdir}: no such run directory")
  rows = [run_row(w, test) for w in workdirs]
  note = (f"\nTest accuracy: report/{test}/ of each run (`--mode=eval --data ...`)." if test else "")
  markdown = markdown_table(rows) + note + ("\n" if note else "")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  write_text_atomic(output + ".md", markdown)
  write_text_atomic(output + ".csv", csv_table(rows))
  print(markdown)
  print(f"wrote {output}.md and {output}.csv")
  return rows


FLAGS = flags.FlagValues()  # this tool's own, not absl's global FLAGS (main.py's); see bloodcell_jax/cli.py
flags.DEFINE_string("output", "comparison", "Path prefix of the tables: <output>.md and <output>.csv.",
                    flag_values=FLAGS)
flags.DEFINE_string("test", None, "Name of the report (report/<name>/ in each run) whose accuracy is the test column.",
                    flag_values=FLAGS)


def main(argv=None) -> int:
  return cli.run("python -m bloodcell_jax.tools.compare", __doc__, FLAGS, argv,
                 lambda *workdirs: compare(list(workdirs), FLAGS.output, FLAGS.test), positionals=("RUN_DIR...",))


if __name__ == "__main__":
  sys.exit(main())
