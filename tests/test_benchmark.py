import json
import os

import jax
import pytest

from bloodcell_jax import benchmark, cpu_info
from conftest import tiny_config


def test_peak_table_lookup():
  assert benchmark.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert benchmark.peak_flops("NVIDIA H200", "float32") == 67e12
  assert benchmark.peak_flops("TPU v5 lite", "bfloat16") == 197e12
  assert benchmark.peak_flops("cpu", "float32") is None


def test_benchmark_reports_every_figure(tmp_path, capsys):
  config = tiny_config(**{"data.augment": "light"})
  report = benchmark.run_benchmark(config, str(tmp_path), batch_sizes=[8], dtypes=["float32"], steps=2,
                                   repeats=2, warmup=1)
  with open(os.path.join(tmp_path, "benchmark.json")) as f:
    assert json.load(f) == json.loads(json.dumps(report))
  env = report["environment"]
  assert env["device_kind"] == jax.local_devices()[0].device_kind and env["jax"] == jax.__version__
  assert env["xla_threads"] == (os.environ.get("PJRT_NPROC") or os.environ.get("NPROC") or "one per core")
  (result,) = report["results"]
  for key in ("train_augment_light", "train_augment_none", "eval"):
    entry = result[key]
    assert 0 < entry["images_per_s_min"] <= entry["images_per_s"] <= entry["images_per_s_max"]
    assert entry["images_per_s_per_device"] == pytest.approx(entry["images_per_s"] / jax.local_device_count())
    assert entry["compile_s"] > 0
  plain = result["train_augment_none"]
  assert plain["flops_per_step"] > 0
  cpu = cpu_info.host()
  out = capsys.readouterr().out
  assert f"(XLA threads: {env['xla_threads']})" in out
  if cpu is not None and cpu.peak_flops("float32"):  # CPU MFU: achieved FLOP/s over the host's estimated peak
    achieved = plain["flops_per_step"] * plain["images_per_s"] / 8
    assert plain["mfu"] == pytest.approx(achieved / cpu.peak_flops("float32"))
    assert f"host CPU: {cpu.describe()}" in out and cpu.describe_peak("float32") in out
    assert env["host_cpu_fields"]["family"] == cpu.family
  else:
    assert plain["mfu"] is None and "peak FLOP/s of" in out
  assert result["host_pipeline_over_step"] > 0
  assert "train+aug img/s" in out


def test_benchmark_runs_a_batchnorm_model(tmp_path):
  """The EfficientNet family (BatchNorm statistics in the train state) through the same benchmark."""
  config = tiny_config(**{"data.augment": "none", "model.name": "efficientnet",
                          "model.variant": "mobilenetv3_small_100", "model.width_multiplier": 0.25,
                          "model.depth_multiplier": 0.1})
  report = benchmark.run_benchmark(config, str(tmp_path), batch_sizes=[8], dtypes=["float32"], steps=1,
                                   repeats=1, warmup=1)
  (result,) = report["results"]
  assert set(k for k in result if k.startswith("train_augment_")) == {"train_augment_none"}
  assert result["train_augment_none"]["images_per_s"] > 0 and result["eval"]["images_per_s"] > 0
  assert result["train_augment_none"]["flops_per_step"] > 0
