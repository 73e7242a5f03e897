"""EfficientNet / EfficientNetV2 / MobileNetV3: timm's architectures, ported weights equal to timm
(PyTorch, CPU, float32, eval mode) with every tensor and BatchNorm statistic randomised, and BatchNorm
handled under pmap (statistics from the global batch, stored in the train state, frozen in eval)."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from bloodcell_jax import optim
from bloodcell_jax.models import create_model
from bloodcell_jax.models.efficientnet import VARIANTS, EfficientNet, make_divisible, resolve_blocks
from bloodcell_jax.pretrained import PortError, convert
from bloodcell_jax.distributed import AXIS
from bloodcell_jax.steps import StepConfig, create_train_state, init_variables, split_variables, train_step
from conftest import ROOT, tiny_config
from timm_reference import import_timm

torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install -r requirements-dev.txt)")


def _images(size: int, n: int, generator) -> "torch.Tensor":
  """NCHW noise images, each with its own brightness and contrast (so pooled features differ)."""
  shift = torch.rand((n, 1, 1, 1), generator=generator) - 0.5
  scale = 0.5 + torch.rand((n, 1, 1, 1), generator=generator)
  return shift + scale * torch.randn((n, 3, size, size), generator=generator)


def _randomised(timm_name: str, seed: int = 0, size: int = 64):
  """A timm model in eval mode with every parameter random and random BatchNorm statistics of the
  right scale: measured over random images in training mode, then each scaled and shifted at
  random (purely random statistics would make activations vanish or explode over 30+ layers)."""
  timm = import_timm()
  model = timm.create_model(timm_name, pretrained=False)
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if p.ndim >= 2:  # He scaling
        gain = 0.5 if name.startswith("conv_head") else 2.0
        p.copy_(noise * np.sqrt(gain / p[0].numel()))
      elif name.endswith("weight"):
        p.copy_(1.0 + 0.2 * noise)
      else:
        p.copy_(0.1 * noise)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
      norm.reset_running_stats()
      norm.momentum = None  # a plain average over the calibration batches
    model.train()
    for _ in range(2):  # calibration images like the test's
      model(_images(size, 8, generator))
    for norm in norms:
      norm.running_mean.add_(0.1 * torch.randn(norm.running_mean.shape, generator=generator))
      norm.running_var.mul_(0.8 + 0.4 * torch.rand(norm.running_var.shape, generator=generator))
    model.eval()
    spread = model(_images(size, 8, generator)).std()
    model.classifier.weight.mul_(2.0 / spread)  # logits of standard deviation about 2
    model.classifier.bias.mul_(2.0 / spread)
  return model


@pytest.mark.parametrize("timm_name,size", [("mobilenetv3_small_100", 64), ("efficientnet_b0", 64),
                                            ("tf_efficientnet_b0", 67), ("tf_efficientnetv2_s", 67)])
def test_logits_equal_timm(timm_name, size):
  """Equal when computed in float64 (to 1e-6: the logits come back as float32), and in float32 to 1e-4.

  67 px makes TensorFlow's SAME padding asymmetric at every stride-2 layer. A randomised
  EfficientNetV2-S (40 blocks) amplifies float32 rounding so much that timm's own float32 logits
  differ from its float64 ones by about 5e-4 (0.1 for some seeds); there the float32 check is that
  ours are as close to the exact logits as timm's float32 ones.
  """
  reference = _randomised(timm_name, size=size)
  tensors = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
  converted = convert(tensors, timm_name)
  assert (converted.family, converted.variant, converted.num_classes) == ("efficientnet", timm_name, 1000)
  x = _images(size, 2, torch.Generator().manual_seed(1)).numpy().transpose(0, 2, 3, 1).copy()
  with torch.no_grad():
    expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    exact = reference.double()(torch.from_numpy(x.transpose(0, 3, 1, 2)).double()).numpy()
  assert np.abs(exact[0] - exact[1]).max() > 0.05  # the output depends on the input: a wrong tensor shows
  model = EfficientNet(1000, VARIANTS[timm_name], depthwise_impl="xla")
  apply = jax.jit(lambda variables, x: model.apply(variables, x, train=False))  # one compile, not one per op
  variables = {"params": converted.params, **converted.model_state}
  with jax.enable_x64(True):
    ours64 = np.asarray(apply(jax.tree.map(lambda v: np.asarray(v, np.float64), variables), x.astype(np.float64)))
  np.testing.assert_allclose(ours64, exact, atol=1e-6, rtol=0)  # computed in float64, returned as float32
  ours = np.asarray(apply(variables, x))
  if timm_name == "tf_efficientnetv2_s":
    assert np.abs(ours - exact).max() <= 2 * np.abs(expected - exact).max() + 1e-5
  else:
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_every_variant_has_timm_parameter_and_statistic_counts():
  timm = import_timm()
  import torch
  for name, arch in VARIANTS.items():
    with torch.device("meta"):  # shapes only: no memory, no initialisation (the large variants take seconds)
      reference = timm.create_model(name, pretrained=False)
    shapes = jax.eval_shape(lambda: EfficientNet(1000, arch).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == sum(p.numel() for p in reference.parameters())
    assert sum(x.size for x in jax.tree.leaves(shapes["batch_stats"])) == sum(
        b.numel() for k, b in reference.named_buffers() if "running" in k), name


def test_channel_rounding_and_depth_scaling_by_hand():
  assert [make_divisible(v) for v in (16 * 4.5, 24 * 3.67, 1280 * 1.1, 40 * 1.2, 3.9)] == [72, 88, 1408, 48, 8]
  _, stages, head = resolve_blocks(VARIANTS["efficientnet_b3"])  # depth 1.4: ceil(repeats * 1.4) per stage
  assert [len(s) for s in stages] == [2, 3, 3, 5, 5, 6, 2] and head == 384
  block = stages[1][0]
  assert (block.in_chs, block.mid_chs, block.out_chs, block.se_chs, block.stride) == (24, 144, 32, 6, 2)


def test_ambiguous_and_bad_checkpoints_are_refused():
  tensors = {k: v.detach().numpy() for k, v in _randomised("efficientnet_b0").state_dict().items()}
  with pytest.raises(PortError, match="fits efficientnet_b0 and tf_efficientnet_b0.*--variant"):
    convert(tensors, "weights.safetensors")
  assert convert(tensors, "weights.safetensors", variant="tf_efficientnet_b0").variant == "tf_efficientnet_b0"
  broken = dict(tensors)
  broken["blocks.1.0.conv_dw.weight"] = broken["blocks.1.0.conv_dw.weight"][:, :, :2]
  del broken["bn2.running_var"]
  broken["extra.weight"] = np.zeros(3)
  with pytest.raises(PortError, match="3 mismatches") as error:
    convert(broken, "efficientnet_b0.ra_in1k")
  message = str(error.value)
  assert "wrong shape blocks.1.0.conv_dw.weight" in message and "missing batch_stats/bn2/var" in message
  assert "unexpected extra.weight" in message


def _tiny_mobilenet():
  """The same blocks with a quarter of the channels and one block per stage: compiles in seconds."""
  config = tiny_config()
  config.model.name, config.model.variant = "efficientnet", "mobilenetv3_small_100"
  config.model.width_multiplier, config.model.depth_multiplier = 0.25, 0.1
  return config


# EfficientNetV2-S (fused and plain MBConv blocks) here; MobileNetV3 end to end below.
def test_batchnorm_statistics_come_from_the_global_batch_and_training_moves_them():
  """Two devices with half the batch each give the running statistics of one device with all of it
  (the same on both devices), and three steps on the same batch lower its loss."""
  config = _tiny_mobilenet()
  config.model.variant = "tf_efficientnetv2_s"
  model = create_model(config.model, 8)
  params, model_state = split_variables(init_variables(model, 32, seed=0))
  tx = optim.create_optimizer(config.optim, params, optim.learning_rate_schedule(config.optim, 10, 1))
  rng = np.random.default_rng(1)
  images, labels = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), rng.integers(0, 8, 8)
  results, losses = [], []
  for devices in (1, 2):
    state = jax_utils.replicate(create_train_state(params, tx, 0, model_state), jax.local_devices()[:devices])
    step = jax.pmap(functools.partial(train_step, model=model, tx=tx, cfg=StepConfig(8, (0.5,) * 3, (0.25,) * 3)),
                    axis_name=AXIS, devices=jax.local_devices()[:devices])
    batch = {"image": images.reshape(devices, -1, 32, 32, 3), "label": labels.reshape(devices, -1)}
    for _ in range(3 if devices == 2 else 1):
      state, metrics, _ = step(state, batch, jnp.ones((devices, 8)))
      assert bool(metrics["finite"][0])
      losses.append(float(metrics["loss_sum"][0] / metrics["weight_sum"][0]))
      if len(results) < devices:
        results.append([np.asarray(x) for x in jax.tree.leaves(state.model_state["batch_stats"])])
  initial = jax.tree.leaves(model_state["batch_stats"])
  assert any(not np.allclose(after[0], before) for after, before in zip(results[0], initial))
  for one, two in zip(*results):
    np.testing.assert_allclose(one[0], two[0], rtol=2e-4, atol=2e-5)
    np.testing.assert_array_equal(two[0], two[1])  # averaged over the batch axis: the same on both devices
  assert losses[-1] < losses[1]  # the 2-device steps on the same batch


def test_port_command_and_fine_tuning_start(tmp_path):
  """A timm-named safetensors file -> checkpoints/pretrained/<name>/ (with BatchNorm statistics) ->
  a run's initial variables: backbone and statistics loaded, a fresh 8-class classifier."""
  from safetensors.numpy import save_file

  from bloodcell_jax.pretrained import apply_to_config, merge_into
  from bloodcell_jax.pretrained.port import port
  from bloodcell_jax.pretrained.store import load_variables

  tensors = {k: v.detach().numpy().copy() for k, v in _randomised("mobilenetv3_small_100").state_dict().items()
             if not k.endswith("num_batches_tracked")}
  source = tmp_path / "mobilenetv3_small_100.lamb_in1k.safetensors"
  save_file(tensors, str(source))
  directory = port(str(source), name="mnv3", out=str(tmp_path / "pretrained"))
  variables, meta = load_variables(directory)
  assert (meta["family"], meta["variant"], meta["num_classes"]) == ("efficientnet", "mobilenetv3_small_100", 1000)
  np.testing.assert_array_equal(variables["batch_stats"]["blocks_1_0"]["bn2"]["var"], tensors["blocks.1.0.bn2.running_var"])

  config = tiny_config()
  config.model.name, config.model.variant, config.model.init_from = "efficientnet", "efficientnet_b0", directory
  apply_to_config(config)
  assert config.model.variant == "mobilenetv3_small_100"
  model = create_model(config.model, 8)
  params, model_state = split_variables(init_variables(model, 32, seed=0))
  params, model_state = merge_into(params, model_state, config)
  np.testing.assert_array_equal(params["conv_stem"]["kernel"], tensors["conv_stem.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(model_state["batch_stats"]["bn1"]["mean"], tensors["bn1.running_mean"])
  assert params["classifier"]["kernel"].shape == (1024, 8)  # fresh head for the 8 classes


def test_main_trains_evaluates_and_exports_a_batchnorm_model(tmp_path):
  """main.py end to end with BatchNorm statistics: train on 2 devices, restore for predict, export;
  the exported function (weights + statistics) gives the checkpoint's probabilities."""
  import csv
  import os
  import subprocess
  import sys

  from bloodcell_jax.classes import CLASS_NAMES
  from conftest import ROOT, run_main

  workdir = str(tmp_path / "run")
  args = ["--config", "configs/mobilenetv3_small.py", "--config.data.source=sample", "--config.data.image_size=32",
          "--config.model.width_multiplier=0.25", "--config.model.depth_multiplier=0.1",
          "--config.model.depthwise_impl=xla", "--config.train.batch_size=32", "--config.train.num_epochs=1",
          "--config.eval.tta=none", f"--workdir={workdir}"]
  trained = run_main(args, devices=2)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert os.path.exists(os.path.join(workdir, "report", "validation", "report.md"))
  out = str(tmp_path / "pred.csv")
  predicted = run_main(["--mode=predict", f"--workdir={workdir}", "--data=sample", f"--output={out}"])
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  with open(out) as f:
    rows = list(csv.DictReader(f))[:3]
  exported = run_main(["--mode=export", f"--workdir={workdir}"])
  assert exported.returncode == 0, exported.stderr[-3000:]
  files = [os.path.join("bloodcell_jax", "sample_data", "pbc96_sample", r["id"]) for r in rows]
  loader = subprocess.run([sys.executable, os.path.join(workdir, "export", "load_model.py")] + files, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert loader.returncode == 0, loader.stderr[-3000:]
  loaded = list(csv.DictReader(loader.stdout.splitlines()))
  columns = [f"p_{name}" for name in CLASS_NAMES]
  np.testing.assert_allclose([[float(r[c]) for c in columns] for r in loaded],
                             [[float(r[c]) for c in columns] for r in rows], atol=2e-6)
  np.testing.assert_allclose([float(r["reject_score"]) for r in loaded], [float(r["reject_score"]) for r in rows],
                             rtol=1e-4)
  assert [r["reject_reason"] for r in loaded] == [r["reject_reason"] for r in rows]


def test_freezing_and_layer_decay_know_the_family():
  """`optim.trainable=head` trains conv_head, bn2 and the classifier; layer decay orders the blocks."""
  config = _tiny_mobilenet()
  config.model.variant = "efficientnet_b0"
  params, _ = split_variables(init_variables(create_model(config.model, 8), 32, seed=0))
  head_only = optim.trainable_mask(params, "head")
  assert {k for k, v in head_only.items() if all(jax.tree.leaves(v))} == {"conv_head", "bn2", "classifier"}
  assert not any(jax.tree.leaves({k: v for k, v in head_only.items() if k not in ("conv_head", "bn2", "classifier")}))
  last = optim.trainable_mask(params, "last_stages", unfreeze_stages=1)
  assert all(jax.tree.leaves(last["blocks_6_0"])) and not any(jax.tree.leaves(last["blocks_5_0"]))
  scales = optim.layer_scales(params, 0.5)
  blocks = sorted((k for k in params if k.startswith("blocks_")), key=lambda k: tuple(map(int, k.split("_")[1:])))
  assert len(blocks) == 7  # one block per stage at depth x0.1
  assert float(scales["conv_stem"]["kernel"]) == 0.5 ** 8 and float(scales["classifier"]["kernel"]) == 1.0
  assert [float(scales[b]["conv_pwl" if "conv_pwl" in scales[b] else "conv_pw"]["kernel"]) for b in blocks] == [
      0.5 ** (8 - i) for i in range(1, 8)]


# ImageNet classes a correct model may give each photograph (tests/data/README.md).
_PHOTOGRAPHS = {"chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
                "coffee": {504, 967, 968}}  # coffee mug, espresso, cup


def test_lite0_real_imagenet_weights_from_the_package_equal_timm(tmp_path):
  """The packaged EfficientNet-Lite0 weights, read without PyTorch and ported by name, give timm's
  tf_efficientnet_lite0 logits (same weights, keys mapped, read by torch.load) to 1e-4 on real
  photographs, and both see a cat and a cup."""
  from PIL import Image
  from bloodcell_jax.pretrained import efficientnet_keys, load_variables, readers
  from bloodcell_jax.pretrained.port import port
  try:
    path = readers.packaged_file("efficientnet_lite0.package")
  except Exception as e:
    pytest.skip(str(e))
  directory = port("efficientnet_lite0.package", out=str(tmp_path))
  variables, meta = load_variables(directory)
  assert (meta["family"], meta["variant"], meta["scheme"], meta["num_classes"]) == (
      "efficientnet", "tf_efficientnet_lite0", "lukemelas", 1000)
  assert meta["key_report"]["source_keys"] == 296 and meta["mean"] == meta["std"] == [0.5, 0.5, 0.5]
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == 4_652_008

  state = torch.load(path, map_location="cpu", weights_only=True)
  _, stages, _ = resolve_blocks(VARIANTS["tf_efficientnet_lite0"])
  names = efficientnet_keys.timm_names_of_lukemelas(state, [len(s) for s in stages])
  reference = import_timm().create_model("tf_efficientnet_lite0", pretrained=False).eval()
  reference.load_state_dict({names[k]: v for k, v in state.items()}, strict=True)

  photos = np.stack([np.asarray(Image.open(os.path.join(ROOT, "tests", "data", f"{name}.jpg")).convert("RGB"),
                                np.float32) / 255 for name in _PHOTOGRAPHS])
  x = (photos - np.float32(meta["mean"])) / np.float32(meta["std"])
  with torch.no_grad():
    expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  ours = np.asarray(EfficientNet(1000, VARIANTS["tf_efficientnet_lite0"], depthwise_impl="xla").apply(variables, x))
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
  for logits in (ours, expected):
    for (name, classes), top1 in zip(_PHOTOGRAPHS.items(), logits.argmax(-1)):
      assert top1 in classes, (name, top1)
