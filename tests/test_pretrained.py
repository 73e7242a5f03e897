"""Porting ConvNeXt weights: logit parity with reference implementations this project did not write
(Hugging Face transformers and timm), block by block; every key accounted for;
the command writes all or nothing; fine-tuning starts from the weights and round-trips exactly."""

import json
import os

import jax
import numpy as np
import pytest

from bloodcell_jax import optim
from bloodcell_jax.models.convnext import VARIANTS, ConvNeXt
from bloodcell_jax.pretrained import PortError, convert, load
from bloodcell_jax.pretrained.port import port
from conftest import restore_params, run_main
from timm_reference import import_timm, import_transformers

torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install -r requirements-dev.txt)")
transformers = import_transformers()


def _randomise(module, seed=0):
  """Every tensor random, at scales that keep activations O(1) through many blocks."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if p.ndim >= 2:
        p.copy_(noise / np.sqrt(p[0].numel()))
      elif name.endswith("weight"):
        p.copy_(1.0 + 0.2 * noise)
      else:  # biases, layer scales
        p.copy_(0.2 * noise)
  return module.eval()


def _hf_model(depths, dims, num_classes=1000, seed=0):
  config = transformers.ConvNextConfig(depths=list(depths), hidden_sizes=list(dims), num_labels=num_classes)
  return _randomise(transformers.ConvNextForImageClassification(config), seed)


def _state_dict(module):
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _inputs(size=64, n=2):
  return np.random.default_rng(0).standard_normal((n, size, size, 3)).astype(np.float32)


def _ours(converted, impl="xla"):
  return ConvNeXt(num_classes=converted.num_classes, depths=converted.depths, dims=converted.dims,
                  depthwise_impl=impl)


@pytest.mark.parametrize("variant", ["atto", "tiny"])
def test_logits_equal_huggingface_convnext(variant):
  reference = _hf_model(*VARIANTS[variant])
  converted = convert(_state_dict(reference), variant)
  assert (converted.scheme, converted.variant, converted.num_classes) == ("huggingface", variant, 1000)
  x = _inputs()
  with torch.no_grad():
    expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()
  for impl in ("xla", "shift"):
    logits = np.asarray(_ours(converted, impl).apply({"params": converted.params}, x))
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
  assert np.abs(expected).max() > 0.5  # not a degenerate all-zero comparison


def test_tiny_matches_block_by_block():
  reference = _hf_model(*VARIANTS["tiny"])
  converted = convert(_state_dict(reference), "tiny")
  x = _inputs(size=64, n=1)
  captured = {}
  hooks = [layer.register_forward_hook(lambda m, i, o, key=(s, b): captured.__setitem__(key, o))
           for s, stage in enumerate(reference.convnext.encoder.stages) for b, layer in enumerate(stage.layers)]
  with torch.no_grad():
    reference(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  for hook in hooks:
    hook.remove()
  _, state = _ours(converted).apply({"params": converted.params}, x, capture_intermediates=True)
  ours = state["intermediates"]
  for (stage, block), out in sorted(captured.items()):
    mine = np.asarray(ours[f"stages_{stage}"][f"blocks_{block}"]["__call__"][0])
    np.testing.assert_allclose(mine, out.numpy().transpose(0, 2, 3, 1), atol=1e-5, rtol=0,
                               err_msg=f"stage {stage} block {block}")
  assert len(captured) == sum(VARIANTS["tiny"][0])


def test_logits_equal_timm_convnext():
  timm = import_timm()
  for variant in ("atto", "tiny"):
    reference = _randomise(timm.create_model(f"convnext_{variant}", pretrained=False))
    converted = convert(_state_dict(reference), variant)
    assert converted.scheme == "timm"
    x = _inputs()
    with torch.no_grad():
      expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(_ours(converted).apply({"params": converted.params}, x)), expected,
                               atol=1e-5, rtol=0)


def _renamed(hf_state: dict, scheme: str) -> dict:
  """The same tensors under timm's or facebookresearch/ConvNeXt's published key names."""
  out = {}
  for key, value in hf_state.items():
    k = key
    if scheme == "timm":
      k = (k.replace("convnext.layernorm", "head.norm").replace("convnext.embeddings.patch_embeddings", "stem.0").replace("convnext.embeddings.layernorm", "stem.1")
           .replace("convnext.encoder.stages", "stages").replace("downsampling_layer", "downsample")
           .replace(".layers.", ".blocks.").replace(".dwconv", ".conv_dw").replace(".layernorm", ".norm")
           .replace(".pwconv1", ".mlp.fc1").replace(".pwconv2", ".mlp.fc2").replace(".layer_scale_parameter", ".gamma")
           .replace("classifier", "head.fc"))
    else:
      k = (k.replace("convnext.layernorm", "norm").replace("convnext.embeddings.patch_embeddings", "downsample_layers.0.0")
           .replace("convnext.embeddings.layernorm", "downsample_layers.0.1").replace("convnext.encoder.", "")
           .replace(".layers.", ".").replace(".layernorm", ".norm").replace(".layer_scale_parameter", ".gamma")
           .replace("classifier", "head"))
      if ".downsampling_layer." in k:  # stages.i.downsampling_layer.j -> downsample_layers.i.j
        stage, rest = k.split(".downsampling_layer.")
        k = f"downsample_layers.{stage.split('.')[1]}.{rest}"
    out[k] = value
  return out


@pytest.mark.parametrize("scheme", ["timm", "facebook"])
def test_timm_and_facebook_key_names_give_the_same_parameters(scheme):
  hf_state = _state_dict(_hf_model(*VARIANTS["atto"]))
  expected = convert(hf_state, "hf").params
  converted = convert(_renamed(hf_state, scheme), scheme)
  assert converted.scheme == scheme and len(converted.key_map) == len(hf_state)
  jax.tree.map(np.testing.assert_array_equal, converted.params, expected)


def test_mismatches_are_all_listed_at_once_and_nothing_is_written(tmp_path):
  from safetensors.numpy import save_file
  state = _state_dict(_hf_model((1, 1, 1, 1), (8, 16, 24, 32), num_classes=8))
  del state["convnext.encoder.stages.1.layers.0.pwconv1.bias"]
  state["convnext.encoder.stages.0.layers.0.grn.gamma"] = np.zeros(8, np.float32)
  state["convnext.encoder.stages.2.layers.0.dwconv.weight"] = np.zeros((24, 1, 5, 5), np.float32)
  with pytest.raises(PortError) as error:
    convert(state, "broken")
  message = str(error.value)
  assert "3 mismatches" in message and "missing stages_1/blocks_0/mlp_fc1/bias" in message
  assert "unexpected convnext.encoder.stages.0.layers.0.grn.gamma" in message
  assert "wrong shape convnext.encoder.stages.2.layers.0.dwconv.weight" in message
  path = str(tmp_path / "broken.safetensors")
  save_file(state, path)
  result = run_main_port([path, "--out", str(tmp_path / "out")])
  assert result.returncode == 2 and result.stderr.startswith("error: ") and "3 mismatches" in result.stderr
  assert not os.path.exists(tmp_path / "out" / "broken")
  missing = run_main_port([str(tmp_path / "nothing.safetensors")])
  assert missing.returncode == 2 and "nothing.safetensors: no such file or folder" in missing.stderr


def run_main_port(args):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, "-m", "bloodcell_jax.pretrained"] + args, cwd=root, capture_output=True,
                        text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)


def test_port_reads_safetensors_pytorch_files_and_hf_directories(tmp_path):
  from safetensors.numpy import save_file
  reference = _hf_model((1, 1, 1, 1), (8, 16, 24, 32), num_classes=8)
  state = _state_dict(reference)
  expected = convert(state, "x").params
  save_file(_renamed(state, "timm"), str(tmp_path / "w.safetensors"))
  torch.save({"model": {k: torch.from_numpy(v) for k, v in _renamed(state, "facebook").items()}}, tmp_path / "w.pth")
  reference.save_pretrained(tmp_path / "hf_dir")
  for source, scheme in ((tmp_path / "w.safetensors", "timm"), (tmp_path / "w.pth", "facebook"),
                         (tmp_path / "hf_dir", "huggingface")):
    directory = port(str(source), name=f"m_{scheme}", out=str(tmp_path / "pretrained"))
    params, meta = load(directory)
    jax.tree.map(np.testing.assert_array_equal, params, expected)
    assert meta["scheme"] == scheme and meta["num_classes"] == 8 and meta["depths"] == [1, 1, 1, 1]
    assert len(meta["sha256"]) == 64 and meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["key_report"]["mapped"] == len(state)


def test_layer_decay_scales_updates_by_depth():
  params = ConvNeXt(num_classes=8, depths=(1, 2, 1, 1), dims=(8, 16, 24, 32)).init(
      jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
  scales = optim.layer_scales(params, 0.5)
  assert scales["head_fc"]["kernel"] == 1.0 and scales["stem_0"]["kernel"] == 0.5 ** 6
  assert scales["stages_1"]["downsample_1"]["kernel"] == scales["stages_1"]["blocks_0"]["norm"]["scale"] == 0.5 ** 4
  assert scales["stages_1"]["blocks_1"]["gamma"] == 0.5 ** 3 and scales["stages_3"]["blocks_0"]["gamma"] == 0.5


def test_finetune_from_ported_weights_then_restore_gives_the_same_parameters(tmp_path):
  reference = _hf_model((1, 1, 1, 1), (8, 16, 24, 32), num_classes=1000, seed=3)
  (tmp_path / "hf").mkdir()
  reference.save_pretrained(tmp_path / "hf")
  with open(tmp_path / "hf" / "preprocessor_config.json", "w") as f:
    json.dump({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}, f)
  directory = port(str(tmp_path / "hf"), name="toy", out=str(tmp_path / "pretrained"))
  pretrained_params, _ = load(directory)
  workdir = tmp_path / "run"
  result = run_main(["--config", "configs/quickstart.py", "--config.eval.report=False", f"--workdir={workdir}",
                     f"--config.model.init_from={directory}",
                     "--config.data.image_size=32", "--config.train.num_epochs=1", "--config.train.batch_size=32",
                     "--config.optim.learning_rate=1e-4", "--config.optim.layer_decay=0.7",
                     "--config.model.drop_path_rate=0"])
  assert result.returncode == 0, result.stderr[-2000:]
  with open(workdir / "config.json") as f:
    config = json.load(f)
  assert config["data"]["mean"] == [0.5, 0.5, 0.5] and config["model"]["dims"] == [8, 16, 24, 32]
  from bloodcell_jax.train import params_digest
  restored, step = restore_params(str(workdir), "last")
  assert f"final parameters sha256 {params_digest(restored)}" in result.stdout
  assert restored["head_fc"]["kernel"].shape == (32, 8)  # a fresh 8-class head
  steps = 8  # 256 training images / 32; Lion moves each weight by at most lr * (1 + wd * |w|) per step
  for name in ("stem_0", "stages_2"):
    for fresh, old in zip(jax.tree.leaves(restored[name]), jax.tree.leaves(pretrained_params[name])):
      assert 0 < np.abs(fresh - old).max() <= steps * 1e-4 * 1.1
