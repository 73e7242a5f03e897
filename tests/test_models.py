import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bloodcell_jax.models import create_model
from bloodcell_jax.models.cnn import SimpleCNN
from bloodcell_jax.models.convnext import VARIANTS, ConvNeXt
from bloodcell_jax.models.activations import gelu
from bloodcell_jax.models.depthwise import DepthwiseConv, depthwise_conv
from bloodcell_jax.models.matmul import Dense, matmul
from bloodcell_jax.models.patch_conv import PatchConv


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
  for impl in ("shift", "shift_autodiff", "xla", "auto"):
    got = DepthwiseConv(7, impl).apply(params, x)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels", [4, 16])
@pytest.mark.parametrize("size,kernel,stride,padding", [
    ((9, 11), 7, 1, "SAME"), ((67, 67), 3, 2, "SAME"), ((11, 13), 5, 3, ((2, 2), (1, 3)))])
def test_depthwise_implementations_give_identical_outputs_and_gradients(size, kernel, stride, padding, channels):
  """`shift`'s hand-written VJP (flipped-kernel input gradient, per-row kernel gradient) equals
  autodiff of the same sum and of XLA's grouped convolution, exactly in float64, for the strides
  and paddings ConvNeXt and the EfficientNets use (TF "same" padding at 67 px is asymmetric); with
  16 channels the CPU computes the 7x7 layer in channel blocks."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, *size, channels), jnp.float64)
    k = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, 1, channels), jnp.float64)
    results = []
    for impl in ("shift", "shift_autodiff", "xla"):
      loss = lambda k, x: jnp.sum(jnp.sin(depthwise_conv(x, k, impl, stride, padding)))
      results.append((depthwise_conv(x, k, impl, stride, padding), *jax.grad(loss, argnums=(0, 1))(k, x)))
    for ours, autodiff, grouped in zip(*results):
      np.testing.assert_allclose(ours, autodiff, rtol=1e-12, atol=1e-12)
      np.testing.assert_allclose(ours, grouped, rtol=1e-10, atol=1e-10)


def test_depthwise_kernel_gradient_accumulates_bfloat16_in_float32():
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 24, 24, 16))
  k = jax.random.normal(jax.random.PRNGKey(1), (7, 7, 1, 16)) * 0.1
  g = jax.random.normal(jax.random.PRNGKey(2), (8, 24, 24, 16))

  def kernel_grad(dtype):
    _, pull = jax.vjp(lambda k: depthwise_conv(x.astype(dtype), k, "shift"), k.astype(dtype))
    return pull(g.astype(dtype))[0].astype(jnp.float32)

  exact = kernel_grad(jnp.float32)
  # Inputs rounded to bfloat16 leave ~0.4% relative error per product; summed in bfloat16 over
  # 4,608 positions the error would grow far beyond that.
  np.testing.assert_allclose(kernel_grad(jnp.bfloat16), exact, rtol=0.02, atol=0.02 * float(jnp.std(exact)))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rule is about XLA:CPU's fusion")
def test_depthwise_shift_add_is_evaluated_by_one_fusion_on_cpu():
  """The k*k-tap sum is read from memory by its consumers (the forward's sine, the backward's
  cosine, each kernel-gradient reduction) instead of being evaluated again inside each of them."""
  x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((7, 7, 1, 4))
  loss = lambda x, k: jnp.sum(jnp.sin(depthwise_conv(x, k, "shift")))
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, k).compile().as_text()
  entry = hlo[hlo.index("\nENTRY"):].splitlines()
  params = dict(re.findall(r"(%[\w.-]+) = \S+ parameter\((\d)\)", "\n".join(entry)))
  x_name, k_name = (name for name, index in sorted(params.items(), key=lambda item: item[1]))
  operands = [line.split(" fusion(", 1)[1].split(")")[0].split(", ") for line in entry if " fusion(" in line]
  assert sum(x_name in names and k_name in names for names in operands) == 1


def test_depthwise_output_left_to_a_single_reader_when_asked():
  """write_output=False (an inference BatchNorm reads the output once): no conditional forces the
  sum to memory, and values and gradients are the same as with it."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 4))
  k = jax.random.normal(jax.random.PRNGKey(1), (5, 5, 1, 4))
  results = {}
  for write in (True, False):
    forward = jax.jit(lambda x, k, write=write: depthwise_conv(x, k, "shift", 2, write_output=write))
    if jax.default_backend() == "cpu":  # other backends never get the conditional
      assert ("conditional(" in forward.lower(x, k).compile().as_text()) == write
    loss = lambda x, k, write=write: jnp.sum(jnp.sin(depthwise_conv(x, k, "shift", 2, write_output=write)))
    results[write] = (forward(x, k), *jax.grad(loss, argnums=(0, 1))(x, k))
  for a, b in zip(results[True], results[False]):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rule is about XLA:CPU's fusion")
def test_stochastic_depth_draws_its_mask_once_not_per_activation_element():
  """The per-example mask's threefry rounds (xor, shifts) run in fusions of mask size, never
  inside the elementwise loops over the activations that it scales (forward or backward)."""
  from bloodcell_jax.models.convnext import DropPath
  x = jnp.ones((4, 8, 8, 16))
  drop = lambda x: DropPath(0.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  hlo = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(drop(x)) * x))).lower(x).compile().as_text()
  random_computations = {name for name, body in re.findall(r"\n%([\w.-]+) .*? \{\n(.*?)\n\}", hlo, re.S)
                         if " xor(" in body}
  assert random_computations
  callers = re.findall(r"= (\w+)\[([\d,]*)\]\S* fusion\(.*?calls=%([\w.-]+)", hlo)
  sizes = [int(np.prod([int(d) for d in dims.split(",") if d])) for _, dims, called in callers
           if called in random_computations]
  assert sizes and max(sizes) < x.size, sizes


def test_exact_gelu_and_its_derivative_equal_jax_erfc_form():
  with jax.enable_x64(True):
    x = jnp.linspace(-12.0, 12.0, 20001, dtype=jnp.float64)
    np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-12, atol=1e-15)
    ours = jax.vmap(jax.grad(gelu))(x)
    reference = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-15)
  # float32: within PyTorch's erf-form rounding of the erfc form
  x32 = x.astype(jnp.float32)
  np.testing.assert_allclose(gelu(x32), jax.nn.gelu(x32, approximate=False), atol=2e-6)


def _assert_same_layer(ours, reference, x, tolerance):
  """`ours` takes `reference`'s parameter tree and gives its outputs and gradients."""
  params = jax.tree.map(lambda p: p + 0.1, reference.init(jax.random.PRNGKey(1), x))
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == jax.tree.map(jnp.shape, params)
  np.testing.assert_allclose(ours.apply(params, x), reference.apply(params, x), atol=tolerance, rtol=tolerance)
  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
  for a, b in zip(jax.tree.leaves(jax.grad(loss(ours), argnums=(0, 1))(params, x)),
                  jax.tree.leaves(jax.grad(loss(reference), argnums=(0, 1))(params, x))):
    np.testing.assert_allclose(a, b, atol=10 * tolerance, rtol=10 * tolerance)


@pytest.mark.parametrize("size,patch,bias", [((27, 30), 4, True), ((13, 9), 2, True), ((6, 5), 1, False)])
def test_patch_conv_equals_flax_strided_conv_with_the_same_parameters(size, patch, bias):
  """Patch 1 without bias is EfficientNet's pointwise convolution."""
  from flax import linen as nn
  x = jax.random.normal(jax.random.PRNGKey(0), (2, *size, 5))
  reference = nn.Conv(7, (patch, patch), strides=(patch, patch), padding="VALID", use_bias=bias)
  _assert_same_layer(PatchConv(7, patch, use_bias=bias), reference, x, 1e-5)


@pytest.mark.parametrize("impl", ["xla", "transposed_grad"])
def test_dense_equals_flax_dense_in_parameters_values_and_gradients(impl):
  from flax import linen as nn
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 6))
  _assert_same_layer(Dense(5, impl), nn.Dense(5), x, 1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rule is about XLA:CPU's library dispatch")
@pytest.mark.parametrize("features_in, features_out", [(16, 32), (32, 16)])
def test_transposed_grad_leaves_no_dot_contracting_the_batch_of_its_lhs(features_in, features_out):
  """XLA:CPU gives YNNPACK only dots whose lhs contracts its last dimension; autodiff's x^T dy
  contracts the first and goes to Eigen (the control below shows that it still does)."""
  x, kernel = jnp.ones((64, features_in)), jnp.ones((features_in, features_out))

  def lhs_contractions(impl):
    hlo = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(matmul(x, k, impl))), argnums=(0, 1))).lower(
        x, kernel).compile().as_text()
    return re.findall(r"lhs_contracting_dims=\{(\d+)\}", hlo)

  assert "0" in lhs_contractions("xla")
  assert "0" not in lhs_contractions("transposed_grad")


@pytest.mark.parametrize("count, features_in, features_out, transposed", [
    (288, 3072, 768, "x"),  # ConvNeXt-T's last fc2: x^T moves 0.9M elements, dy^T and the result 2.6M
    (18432, 384, 96, "dy"),  # its first fc2: x^T 7.1M, dy^T and the result 1.8M
    (64, 16, 32, "x")])
def test_transposed_grad_transposes_fewer_elements(count, features_in, features_out, transposed):
  x, kernel = jnp.ones((count, features_in)), jnp.ones((features_in, features_out))
  hlo = jax.jit(jax.grad(lambda x, k: jnp.sum(matmul(x, k, "transposed_grad")), argnums=1)).lower(x, kernel).as_text()
  shapes = set(re.findall(r"stablehlo.transpose %\S+, dims = \[1, 0\] : \(tensor<(\d+x\d+)xf32>", hlo))
  expected = {"x": {f"{count}x{features_in}"}, "dy": {f"{count}x{features_out}", f"{features_out}x{features_in}"}}
  assert shapes == expected[transposed]


def test_matmul_impl_is_checked():
  with pytest.raises(ValueError, match="matmul impl must be one of"):
    matmul(jnp.ones((2, 3)), jnp.ones((3, 4)), "eigen")


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
