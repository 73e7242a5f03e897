"""Config resolution: defaults laid under every config, ported weights' architecture, one-line errors
naming the field, and old run directories' config.json read through the same upgrade."""

import json
import os

import jax
import numpy as np
import pytest

from bloodcell_jax import config as config_rules
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.models.convnext import ConvNeXt
from bloodcell_jax.pretrained import save
from conftest import run_main, tiny_config

DEPTHS, DIMS = (1, 1, 1, 1), (8, 16, 24, 32)


@pytest.fixture
def ported(tmp_path):
  """A directory of 'ported' ConvNeXt weights with their own architecture and normalisation."""
  params = ConvNeXt(num_classes=1000, depths=DEPTHS, dims=DIMS).init(
      jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
  meta = {"name": "toy", "source": "test", "family": "convnext", "variant": "custom", "depths": list(DEPTHS),
          "dims": list(DIMS), "num_classes": 1000, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
  return save(str(tmp_path / "toy"), jax.tree.map(np.asarray, params), meta)


def test_resolve_takes_the_ported_architecture_and_leaves_its_input_alone(ported):
  config = tiny_config(**{"model.depths": (1, 1, 2, 1), "model.dims": (32, 64, 128, 256), "model.init_from": ported})
  before = config.to_dict()
  resolved = config_rules.resolve(config)
  assert resolved.model.depths == DEPTHS and resolved.model.dims == DIMS
  assert resolved.data.mean == (0.5, 0.5, 0.5) and resolved.data.std == (0.25, 0.25, 0.25)
  assert resolved.model.init_from == os.path.abspath(ported)
  assert config.to_dict() == before


def test_benchmark_mode_measures_the_ported_architecture(tmp_path, ported):
  result = run_main(["--mode=benchmark", "--config", "configs/quickstart.py", f"--workdir={tmp_path / 'bench'}",
                     f"--config.model.init_from={ported}", "--config.data.image_size=32", "--config.data.augment=none",
                     "--config.model.depthwise_impl=xla", "--bench_batch_sizes=8", "--bench_steps=1",
                     "--bench_repeats=1"])
  assert result.returncode == 0, result.stderr[-2000:]
  with open(tmp_path / "bench" / "benchmark.json") as f:
    model = json.load(f)["model"]
  assert model["depths"] == list(DEPTHS) and model["dims"] == list(DIMS)  # quickstart's are (1, 1, 2, 1), 32..256


def test_a_config_file_without_newer_fields_gets_their_defaults():
  partial = tiny_config().to_dict()
  del partial["eval"], partial["data"]["fill_mode"], partial["train"]["skip_nonfinite_steps"]
  resolved = config_rules.upgrade(partial)
  assert resolved.eval.tta == "dihedral" and resolved.eval.report is True
  assert resolved.data.fill_mode == "reflect" and resolved.train.skip_nonfinite_steps is False
  assert resolved.model.dims == DIMS and resolved.data.image_size == 32  # its own values are kept


def _write_run_config(workdir, values):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(values, f)


def test_an_old_run_config_is_upgraded_where_it_is_read(tmp_path):
  """A run recorded before eval, fill_mode, the multipliers and skip_nonfinite_steps existed."""
  old = json.loads(tiny_config().to_json_best_effort())
  del old["eval"], old["data"]["fill_mode"], old["train"]["skip_nonfinite_steps"]
  del old["model"]["width_multiplier"], old["model"]["depth_multiplier"], old["data"]["clean"]
  old["model"]["retired_field"] = 7  # a field since removed stays in the record
  _write_run_config(tmp_path, old)
  config = config_rules.load_run_config(str(tmp_path))
  assert config.eval.tta == "dihedral" and config.data.fill_mode == "reflect" and config.data.clean is False
  assert config.model.depths == DEPTHS and config.model.retired_field == 7
  assert config_rules.resolve_tta(config, None) == "dihedral" and config_rules.resolve_tta(config, "hflip") == "hflip"
  # Checkpoints written before the multipliers existed keep fitting the same architecture.
  assert config_rules.architecture_signature(config) == {"name": "convnext", "variant": "atto", "depths": [1, 1, 1, 1],
                                                          "dims": [8, 16, 24, 32], "num_classes": 8}


@pytest.mark.parametrize("content, expected", [
    ('{"data": {"image_size": "large"}}', "config.json: Could not override field 'image_size'"),
    ("{not json", "config.json: not a readable run config"),
    ("[1, 2]", "config.json: not a run config"),
    ('{"optim": {"name": "adam"}}', "config: optim.name='adam' is not one of lion, adamw, sgd"),
])
def test_a_bad_run_config_is_one_line_naming_the_file_or_field(tmp_path, content, expected):
  (tmp_path / "config.json").write_text(content)
  with pytest.raises(UserInputError, match=expected.replace("(", r"\(").replace(".", r"\.")):
    config_rules.load_run_config(str(tmp_path))
  with pytest.raises(UserInputError, match="missing; is .* the --workdir of a training run"):
    config_rules.load_run_config(str(tmp_path / "elsewhere"))


@pytest.mark.parametrize("field, value, expected", [
    ("data.fill_mode", "wrap", "data.fill_mode='wrap' is not one of reflect, constant, nearest"),
    ("eval.tta", "spin", "eval.tta: unknown test-time augmentation 'spin'"),
    ("train.monitor_metric", "auc", "train.monitor_metric='auc' is not one of loss, accuracy"),
    ("optim.trainable", "body", "optim.trainable='body' is not one of all, head, last_stages"),
    ("optim.schedule", "step", "optim.schedule='step' is not one of cosine, constant"),
    ("optim.layer_decay", 1.5, "optim.layer_decay=1.5 must lie in (0, 1]"),
    ("model.depthwise_impl", "fft", "model.depthwise_impl='fft' is not one of"),
    ("data.image_size", 16, "data.image_size=16 is below the minimum of 32"),
    ("model.name", "vit", "unknown model 'vit'"),
])
def test_validate_names_the_field(field, value, expected):
  with pytest.raises(UserInputError) as error:
    config_rules.validate(tiny_config(**{field: value}))
  assert str(error.value).startswith("config: ") and expected in str(error.value)


def test_step_config_carries_the_parsed_policy():
  from bloodcell_jax.augment import parse
  step = config_rules.step_config(tiny_config(**{"data.augment": "light"}), "hflip")
  assert step.augment == parse("light") and step.tta == "hflip" and step.fill_mode == "reflect"
  hash(step)  # the steps close over it: it must stay hashable


@pytest.mark.parametrize("args, expected", [
    (["--config.train.no_such_field=3"], "--config.train.no_such_field: the config has no field 'no_such_field'"),
    (["--config.train.batch_sizee=3"], "the config has no field 'batch_sizee' (closest: batch_size)"),
    (["--config.nosection.x=1"], "--config.nosection.x: the config has no field 'nosection'"),
    (["--config.train.num_epochs=abc"], "flag --config.train.num_epochs=abc: invalid literal for int()"),
    (["--config=configs/no_such_config.py"], "--config configs/no_such_config.py: no such file"),
    (["--config={bad}"], "does not load (AttributeError: module 'config_config' has no attribute 'get_config')"),
    (["--mode=fly"], "flag --mode=fly: value should be one of"),
])
def test_main_reports_bad_flags_and_config_files_in_one_line(tmp_path, args, expected):
  bad = tmp_path / "bad_config.py"
  bad.write_text("x = 1\n")
  args = [a.format(bad=bad) for a in args]
  config = [] if any(a.startswith("--config=") for a in args) else ["--config", "configs/quickstart.py"]
  result = run_main(config + args + [f"--workdir={tmp_path / 'run'}"])
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert not os.path.exists(tmp_path / "run")


def test_damaged_ported_weights_are_refused(ported):
  from bloodcell_jax.pretrained.store import load_variables
  variables, _ = load_variables(ported)
  assert variables["params"]["stem_0"]["kernel"].shape == (4, 4, 3, 8)
  files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(ported, "params")) for name in names
           if os.sep + "d" + os.sep in os.path.join(root, name)]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.seek(os.path.getsize(largest) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0x01]))
  with pytest.raises(UserInputError, match="the ported weights are damaged"):
    load_variables(ported)
