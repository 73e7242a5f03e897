import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bloodcell_jax.models import create_model
from bloodcell_jax.models.cnn import SimpleCNN
from bloodcell_jax.models.convnext import VARIANTS, ConvNeXt
from bloodcell_jax.models.depthwise import DepthwiseConv, depthwise_conv


def _param_count(model, size=32):
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("variant, expected", [
    ("tiny", 28_589_128), ("small", 50_223_688), ("base", 88_591_464), ("large", 197_767_336)])
def test_imagenet_parameter_counts_match_the_reference(variant, expected):
  """Counts published for the reference ConvNeXt with a 1000-class head (torchvision/timm)."""
  depths, dims = VARIANTS[variant]
  assert _param_count(ConvNeXt(1000, depths, dims)) == expected


def test_parameter_tree_mirrors_timm_keys():
  params = jax.eval_shape(lambda: ConvNeXt(8, (1, 2), (8, 16)).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
  paths = {"/".join(str(k.key) for k in path): leaf.shape
           for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  assert paths == {
      "stem_0/kernel": (4, 4, 3, 8), "stem_0/bias": (8,), "stem_1/scale": (8,), "stem_1/bias": (8,),
      "stages_0/blocks_0/conv_dw/kernel": (7, 7, 1, 8), "stages_0/blocks_0/conv_dw/bias": (8,),
      "stages_0/blocks_0/norm/scale": (8,), "stages_0/blocks_0/norm/bias": (8,),
      "stages_0/blocks_0/mlp_fc1/kernel": (8, 32), "stages_0/blocks_0/mlp_fc1/bias": (32,),
      "stages_0/blocks_0/mlp_fc2/kernel": (32, 8), "stages_0/blocks_0/mlp_fc2/bias": (8,),
      "stages_0/blocks_0/gamma": (8,),
      "stages_1/downsample_0/scale": (8,), "stages_1/downsample_0/bias": (8,),
      "stages_1/downsample_1/kernel": (2, 2, 8, 16), "stages_1/downsample_1/bias": (16,),
      **{f"stages_1/blocks_{i}/{name}": shape for i in range(2) for name, shape in {
          "conv_dw/kernel": (7, 7, 1, 16), "conv_dw/bias": (16,), "norm/scale": (16,), "norm/bias": (16,),
          "mlp_fc1/kernel": (16, 64), "mlp_fc1/bias": (64,), "mlp_fc2/kernel": (64, 16),
          "mlp_fc2/bias": (16,), "gamma": (16,)}.items()},
      "head_norm/scale": (16,), "head_norm/bias": (16,), "head_fc/kernel": (16, 8), "head_fc/bias": (8,),
  }


def test_depthwise_shift_and_xla_agree_and_match_flax_grouped_conv():
  from flax import linen as nn
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 11, 6))
  reference = nn.Conv(6, (7, 7), padding="SAME", feature_group_count=6)
  params = reference.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias too
  expected = reference.apply(params, x)
  for impl in ("shift", "xla", "auto"):
    got = DepthwiseConv(7, impl).apply(params, x)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_depthwise_implementations_give_identical_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
  k = jax.random.normal(jax.random.PRNGKey(1), (7, 7, 1, 4))
  grads = [jax.grad(lambda k, x: jnp.sum(jnp.sin(depthwise_conv(x, k, impl))), argnums=(0, 1))(k, x)
           for impl in ("shift", "xla")]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_convnext_eval_is_deterministic_and_train_uses_stochastic_depth():
  model = ConvNeXt(8, (1, 1), (8, 16), drop_path_rate=0.5, head_dropout=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
  params = model.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + 0.05, params)  # make the residual branches matter
  no_drop = ConvNeXt(8, (1, 1), (8, 16)).apply(params, x)
  np.testing.assert_array_equal(model.apply(params, x), no_drop)
  a = model.apply(params, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  b = model.apply(params, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  c = model.apply(params, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_fully_convolutional_any_input_size():
  model = ConvNeXt(8, (1, 1, 1, 1), (8, 16, 24, 32))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  for size in (32, 64, 96):
    assert model.apply(params, jnp.zeros((2, size, size, 3))).shape == (2, 8)


def test_cnn_baseline_shapes_and_registry():
  cfg = ml_collections.ConfigDict({"name": "cnn", "dtype": "float32", "head_dropout": 0.5})
  model = create_model(cfg, 8)
  assert isinstance(model, SimpleCNN)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  assert set(params) == {"stages_0", "stages_1", "head_hidden", "head_fc"}
  assert params["head_hidden"]["kernel"].shape == (8 * 8 * 64, 128)
  with pytest.raises(ValueError, match="unknown model"):
    create_model(ml_collections.ConfigDict({"name": "vit", "dtype": "float32"}), 8)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = ConvNeXt(8, (1,), (8,), dtype=jnp.bfloat16)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert model.apply(params, jnp.ones((1, 32, 32, 3))).dtype == jnp.float32
