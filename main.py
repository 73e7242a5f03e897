"""Train, evaluate or predict with a blood-cell classifier.

  python main.py --config configs/quickstart.py
  python main.py --config configs/cpu_small.py --config.optim.learning_rate=3e-4
  python main.py --mode=eval --workdir checkpoints/quickstart --data path/to/labelled_data
  python main.py --mode=predict --workdir checkpoints/quickstart --data path/to/images --top_k=3
  python main.py --mode=predict --workdir checkpoints/quickstart --data cells/ --explain cells_explained/
  python main.py --mode=calibrate --workdir checkpoints/quickstart --checkpoint=last
  python main.py --mode=export --workdir checkpoints/quickstart
  python main.py --mode=verify --workdir checkpoints/quickstart

Bad input (data, config values, paths) is reported as one line and exit status 2.
"""

import os
import sys

import bloodcell_jax  # noqa: F401  (selects the JAX backend before JAX loads)
import jax
from absl import app, flags, logging
from ml_collections import config_flags

from bloodcell_jax import (benchmark, cli, compilation_cache, distributed, export, inference, platform_setup,
                           preview, train, verify)
from bloodcell_jax import config as config_rules
from bloodcell_jax.errors import CheckpointWriteError, RunFailure, UserInputError

MODES = ("train", "eval", "predict", "calibrate", "export", "verify", "benchmark", "preview")  # see CONFIG_MODES and RUN_MODES

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py); fields overridable as --config.x.y=v.")
flags.DEFINE_string("workdir", None, "Run directory. Default: checkpoints/<config file name>.")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_string("data", None, "eval/predict: data to run on: a class folder, an npz, a folder of images or "
                    "image files separated by commas (default for eval: the run's validation split).")
flags.DEFINE_string("output", None, "predict: CSV path (default: <workdir>/predictions.csv); "
                    "export: directory (default: <workdir>/export); "
                    "preview: PNG path (default: <workdir>/augment_preview.png).")
flags.DEFINE_string("checkpoint", "best", "eval/predict/calibrate/export: which checkpoint of the run: best, last or a step "
                    "number (--mode=verify lists them).")
flags.DEFINE_string("tta", None, "eval/predict/export: test-time augmentation, one of none, hflip, flips, rot90, "
                    "dihedral (default: the run's eval.tta).")
flags.DEFINE_enum("reject", "on", ("on", "off"), "predict: mark images the run's rejector finds unlike its "
                  "training cells ('not a cell') or too uncertain ('low confidence'); off: classify everything.")
flags.DEFINE_string("explain", None, "predict: a directory for one class-activation overlay PNG per image.")
flags.DEFINE_integer("top_k", 1, "predict: also write the k most likely classes with their probabilities.")
flags.DEFINE_list("bench_batch_sizes", None, "benchmark: global batch sizes (default: the config's).")
flags.DEFINE_list("bench_dtypes", None, "benchmark: compute dtypes, e.g. float32,bfloat16 (default: the config's).")
flags.DEFINE_integer("bench_steps", 10, "benchmark: steps per timed repeat.")
flags.DEFINE_integer("bench_repeats", 5, "benchmark: timed repeats (median and spread are reported).")
flags.DEFINE_list("corruptions", [], "eval: also measure accuracy under these corruptions ('all' or names, e.g. "
                  "jpeg,defocus; see bloodcell_jax/robustness.py).")
flags.DEFINE_float("severity", 0.8, "eval: corruption magnitude in [0, 1].")
flags.DEFINE_multi_string("preview_policy", None, "preview: a policy to show (repeatable; default: the config's, "
                          "light, medium, heavy).")
flags.DEFINE_integer("preview_columns", 6, "preview: augmented versions per image.")
flags.DEFINE_integer("preview_per_class", 1, "preview: example images per class.")
flags.DEFINE_string("compilation_cache", compilation_cache.AUTO,
                    "Where compiled steps are kept for the next run of the same workdir (resume, eval, predict): "
                    "'auto' = <workdir>/xla_cache on GPUs and TPUs, none on CPUs; a directory (any backend); or "
                    "'none'. JAX_COMPILATION_CACHE_DIR wins. --mode=benchmark never uses one.")
FLAGS = flags.FLAGS


def default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", name)


def _use_compilation_cache(workdir: str) -> None:
  directory = compilation_cache.enable(FLAGS.compilation_cache, workdir)
  if directory:
    logging.info("compiled steps are cached in %s", directory)


def _train(config, workdir: str) -> None:
  distributed.initialize(config)
  _use_compilation_cache(workdir)
  if not distributed.is_primary():
    logging.set_verbosity(logging.WARNING)
  row = train.train_and_evaluate(config, workdir)
  if "params_sha256" not in row:  # stopped by a signal; the command resumes
    return
  who = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
  print(f"{who}finished epoch {row['epoch'] + 1}; run directory {workdir}; "
        f"final parameters sha256 {row['params_sha256']}", flush=True)
  if config.eval.report:
    inference.fit_trust(workdir, "best", config)
    inference.run_eval(workdir, None, "best")


def _benchmark(config, workdir: str) -> None:
  compilation_cache.disable()  # compile time is one of the figures
  try:
    batch_sizes = [int(b) for b in FLAGS.bench_batch_sizes or [config.train.batch_size]]
  except ValueError:
    raise UserInputError(f"--bench_batch_sizes: not a list of integers: {FLAGS.bench_batch_sizes}") from None
  benchmark.run_benchmark(config, workdir, batch_sizes, FLAGS.bench_dtypes or [config.model.dtype],
                          FLAGS.bench_steps, FLAGS.bench_repeats)


def _preview(config, workdir: str) -> None:
  preview.run_preview(config, FLAGS.output or os.path.join(workdir, "augment_preview.png"), FLAGS.preview_policy,
                      FLAGS.preview_columns, FLAGS.preview_per_class)


def _eval(workdir: str) -> None:
  _use_compilation_cache(workdir)
  inference.run_eval(workdir, FLAGS.data, FLAGS.checkpoint, FLAGS.tta, FLAGS.corruptions, FLAGS.severity)


def _predict(workdir: str) -> None:
  _use_compilation_cache(workdir)
  inference.run_predict(workdir, FLAGS.data, FLAGS.output, FLAGS.checkpoint, FLAGS.tta, FLAGS.top_k,
                        reject=FLAGS.reject == "on", explain_dir=FLAGS.explain)


def _calibrate(workdir: str) -> None:
  _use_compilation_cache(workdir)
  inference.fit_trust(workdir, FLAGS.checkpoint, tta_flag=FLAGS.tta)


def _export(workdir: str) -> None:
  _use_compilation_cache(workdir)
  export.run_export(workdir, FLAGS.output or os.path.join(workdir, "export"), FLAGS.checkpoint, FLAGS.tta)


def _verify(workdir: str) -> None:
  sys.exit(verify.run_verify(workdir))


# Modes that start from a config file get (resolved config, run directory: --workdir or
# checkpoints/<config name>); modes that use a trained run get its directory (--workdir, required).
CONFIG_MODES = {"train": _train, "benchmark": _benchmark, "preview": _preview}
RUN_MODES = {"eval": _eval, "predict": _predict, "calibrate": _calibrate, "export": _export, "verify": _verify}


def run(argv) -> None:
  if len(argv) > 1:
    raise UserInputError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.mode in CONFIG_MODES:
    if FLAGS.config is None:
      raise UserInputError(f"--config is required for --mode={FLAGS.mode} (for example --config configs/quickstart.py)")
    workdir = os.path.abspath(FLAGS.workdir or default_workdir(flags.FLAGS["config"].config_filename))
    CONFIG_MODES[FLAGS.mode](config_rules.resolve(FLAGS.config), workdir)
  else:
    if not FLAGS.workdir:
      raise UserInputError(f"--mode={FLAGS.mode} needs --workdir (the run directory of a trained model)")
    RUN_MODES[FLAGS.mode](os.path.abspath(FLAGS.workdir))


def main(argv) -> None:
  cli.quiet_library_logs()
  # Long CPU runs only (see platform_setup), and before JAX starts its backend.
  if FLAGS.mode in ("train", "benchmark") and platform_setup.keep_freed_host_memory():
    logging.info("CPU backend: glibc keeps freed memory for the next step (GLIBC_TUNABLES overrides this)")
  try:
    run(argv)
  except (UserInputError, RunFailure) as e:
    cli.error(e)
    if isinstance(e, CheckpointWriteError):  # Orbax's writer threads would print tracebacks at exit
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(e.exit_code)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.main_flags_parser(FLAGS))
