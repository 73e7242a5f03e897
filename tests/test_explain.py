"""Grad-CAM: its maps point at the evidence on a task where the evidence is known, its gradients are
those of the logits, and its pictures come out as PNGs.

The known-evidence task: grey noise with one small bright square, red for class 0 and green for
class 1, so the square is the only place where the class can be seen.
"""

import functools
import io

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest
from PIL import Image

from bloodcell_jax import explain
from bloodcell_jax.models import create_model
from bloodcell_jax.models.cnn import SimpleCNN
from bloodcell_jax.models.convnext import ConvNeXt
from bloodcell_jax.steps import normalize

SIZE, PATCH, MARGIN = 48, 8, 4  # the peak counts as on the patch within MARGIN pixels of it
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
COLOURS = np.array([[230, 40, 40], [40, 230, 40]])  # class 0 red, class 1 green


def patch_images(n: int, seed: int):
  """(uint8 images (n, SIZE, SIZE, 3), labels (n,), top-left corners (n, 2)) of the patch task."""
  rng = np.random.default_rng(seed)
  grey = rng.integers(70, 186, (n, SIZE, SIZE, 1))
  images = np.clip(grey + rng.integers(-25, 26, (n, SIZE, SIZE, 3)), 0, 255)
  labels = rng.integers(0, 2, n)
  corners = rng.integers(0, SIZE - PATCH + 1, (n, 2))
  for image, label, (y, x) in zip(images, labels, corners):
    image[y:y + PATCH, x:x + PATCH] = np.clip(COLOURS[label] + rng.integers(-20, 21, (PATCH, PATCH, 3)), 0, 255)
  return images.astype(np.uint8), labels.astype(np.int32), corners


def peak_on_patch(maps: np.ndarray, corners: np.ndarray) -> float:
  """Share of maps whose maximum lies in their image's patch grown by MARGIN pixels."""
  py, px = np.divmod(np.asarray(maps).reshape(len(maps), -1).argmax(1), SIZE)
  y, x = corners[:, 0], corners[:, 1]
  inside = (py >= y - MARGIN) & (py < y + PATCH + MARGIN) & (px >= x - MARGIN) & (px < x + PATCH + MARGIN)
  return float(inside.mean())


def random_variables(model, size: int, seed: int = 0) -> dict:
  """Variables drawn by numpy (LeCun-normal kernels, 1-D ones at 0.1, BatchNorm variances 1): compiling
  `model.init`'s random initialisers costs 4 to 15 s on two cores, eager or jitted."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if getattr(path[-1], "key", None) == "var":
      return np.ones(leaf.shape, leaf.dtype)
    scale = 0.1 if leaf.ndim == 1 else 1 / np.sqrt(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) * scale).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def patch_model():
  """(model, variables) of a SimpleCNN trained on the patch task (200 Adam steps, about 10 s).

  Softmax only fixes logit differences; Grad-CAM reads one raw logit. The classifier layer starts at
  zero, and with two classes Adam's updates of its two columns are exact opposites, so the logits stay
  exact negatives: no offset common to both, left from a random start, that the map would show. (Over
  seeds 0-5: random start, 2 fell below 90 %; zero start, 1, one class's maps all zero, as when a class
  is told by the other colour's absence, which Grad-CAM, showing positive evidence only, cannot show.)
  """
  model = SimpleCNN(num_classes=2, features=(16, 32), hidden=32, dropout=0.0)
  steps, batch = 200, 32
  images, labels, _ = patch_images(steps * batch, seed=0)
  params = random_variables(model, SIZE)["params"]
  params["head_fc"] = jax.tree_util.tree_map(jnp.zeros_like, params["head_fc"])
  tx = optax.adam(2e-3)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss(p):
      logits = model.apply({"params": p}, normalize(x, MEAN, STD))
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for i in range(steps):
    params, opt_state = step(params, opt_state, images[i * batch:(i + 1) * batch], labels[i * batch:(i + 1) * batch])
  return model, {"params": params}


@pytest.fixture(scope="module")
def patch_test():
  return patch_images(128, seed=1)


def test_the_peak_falls_on_the_patch(patch_model, patch_test):
  model, variables = patch_model
  images, labels, corners = patch_test
  maps, classes = explain.grad_cam(model, variables, images, MEAN, STD)
  assert (np.asarray(classes) == labels).mean() >= 0.95, "the model did not learn the patch task"
  rate = peak_on_patch(maps, corners)
  print(f"Grad-CAM peak on the patch (+{MARGIN} px): {rate:.3f}")
  assert rate >= 0.9
  # The measurement can fail: maps that know nothing of the patch score far lower.
  assert peak_on_patch(np.random.default_rng(2).random(maps.shape), corners) < 0.4
  assert peak_on_patch(np.roll(np.asarray(maps), 1, axis=0), corners) < 0.4


def test_predicted_and_explicit_classes(patch_model, patch_test):
  model, variables = patch_model
  images = patch_test[0][:16]
  predicted = np.asarray(model.apply(variables, normalize(images, MEAN, STD))).argmax(-1)
  maps, classes = explain.grad_cam(model, variables, images, MEAN, STD)
  assert classes.dtype == jnp.int32 and maps.dtype == jnp.float32
  np.testing.assert_array_equal(classes, predicted)
  compiled = explain.make_grad_cam(model, MEAN, STD)
  same_maps, same_classes = compiled(variables, images, jnp.full(16, -1, jnp.int32))
  np.testing.assert_array_equal(same_classes, predicted)
  np.testing.assert_allclose(same_maps, maps, atol=1e-6)
  other = (1 - predicted).astype(np.int32)
  mixed = np.where(np.arange(16) % 2 == 0, -1, other).astype(np.int32)
  mixed_maps, mixed_classes = compiled(variables, images, mixed)
  np.testing.assert_array_equal(mixed_classes, np.where(mixed < 0, predicted, other))
  np.testing.assert_allclose(mixed_maps[::2], maps[::2], atol=1e-6)
  assert not np.allclose(mixed_maps[1::2], maps[1::2], atol=0.05)  # the other class's evidence lies elsewhere
  with pytest.raises(ValueError, match="classes"):
    explain.grad_cam(model, variables, images, MEAN, STD, classes=np.full(16, 2))


def test_gradients_are_those_of_the_head_by_hand():
  """SimpleCNN's head is flatten, dense, ReLU, dense: applied by hand to the feature map, its
  gradient is what Grad-CAM must find through the model's perturbation tap."""
  model = SimpleCNN(num_classes=3, features=(4, 8), hidden=8, dropout=0.0)
  images = np.random.default_rng(3).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  x = normalize(images, MEAN, STD)
  variables = random_variables(model, 16, seed=1)
  p = variables["params"]

  def head(fmap):
    hidden = jax.nn.relu(fmap.reshape(len(fmap), -1) @ p["head_hidden"]["kernel"] + p["head_hidden"]["bias"])
    return hidden @ p["head_fc"]["kernel"] + p["head_fc"]["bias"]

  classes = jnp.array([0, 1, 2, -1], jnp.int32)
  gradients_of = jax.jit(explain.feature_map_gradients, static_argnums=0)  # op by op it takes seconds
  logits, fmap, gradients, chosen = gradients_of(model, variables, x, classes)
  assert fmap.shape == (4, 4, 4, 8)
  np.testing.assert_allclose(head(fmap), logits, rtol=1e-5, atol=1e-5)
  assert chosen[3] == int(np.argmax(logits[3])) and list(chosen[:3]) == [0, 1, 2]
  by_hand = jax.jit(jax.grad(lambda f: head(f)[jnp.arange(4), chosen].sum()))(fmap)
  np.testing.assert_allclose(gradients, by_hand, rtol=1e-5, atol=1e-6)
  # Each example's gradient is its own: alone it is the same as in the batch.
  alone = gradients_of(model, variables, x[1:2], classes[1:2])[2]
  np.testing.assert_allclose(alone[0], gradients[1], rtol=1e-5, atol=1e-6)

  cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", fmap, by_hand.mean(axis=(1, 2))))
  cam = jax.image.resize(cam, (4, 16, 16), "bilinear")
  peak = cam.max(axis=(1, 2), keepdims=True)
  expected = np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0)
  maps, _ = explain.grad_cam(model, variables, images, MEAN, STD, classes)
  np.testing.assert_allclose(maps, expected, atol=1e-5)


def mobilenetv3_small():
  from configs import mobilenetv3_small
  config = mobilenetv3_small.get_config()
  config.model.depthwise_impl = "xla"
  return create_model(config.model, 8)


@pytest.mark.parametrize("build, size, fmap_size", [
    (lambda: ConvNeXt(num_classes=8, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), depthwise_impl="xla"), 96, 3),
    (mobilenetv3_small, 64, 2),
], ids=["convnext", "mobilenetv3_small"])
def test_shapes_and_the_default_stage(build, size, fmap_size):
  """Maps have the image's size; by default they come from the deepest stage of stride 16 (twice the
  last stage's side, `fmap_size`), and any stage can be asked for."""
  model = build()
  variables = random_variables(model, size)
  images = np.random.default_rng(4).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  maps, classes = explain.grad_cam(model, variables, images, MEAN, STD)
  assert maps.shape == (2, size, size) and maps.dtype == jnp.float32
  assert classes.shape == (2,) and classes.dtype == jnp.int32
  assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
  peaks = np.asarray(maps.max(axis=(1, 2)))
  assert np.all((peaks == 0.0) | np.isclose(peaks, 1.0, atol=1e-6))
  x = normalize(images, MEAN, STD)
  fmap = jax.eval_shape(functools.partial(explain.feature_map_gradients, model), variables, x, classes)[1]
  assert fmap.shape[1:3] == (2 * fmap_size, 2 * fmap_size)
  last = jax.eval_shape(functools.partial(explain.feature_map_gradients, model, stage=-1), variables, x, classes)[1]
  assert last.shape[1:3] == (fmap_size, fmap_size)
  last_maps, _ = explain.grad_cam(model, variables, images, MEAN, STD, stage=-1)
  assert last_maps.shape == (2, size, size) and not np.allclose(last_maps, maps)


def test_overlay():
  image = np.random.default_rng(5).integers(0, 256, (20, 24, 3), dtype=np.uint8)
  out = explain.overlay(image, np.zeros((20, 24)), alpha=0.45)
  assert out.dtype == np.uint8 and out.shape == (20, 24, 3)
  # A zero map is jet's lowest colour, dark blue (0, 0, 0.5): the image dimmed to 55 % plus 0.45 * 127.5 blue.
  low = np.array(matplotlib.colormaps["jet"](0.0)[:3]) * 255
  np.testing.assert_allclose(low, [0, 0, 127.5])
  np.testing.assert_allclose(out, 0.55 * image + 0.45 * low, atol=0.51)
  np.testing.assert_array_equal(explain.overlay(image, np.zeros((20, 24)), alpha=0.0), image)
  grey = np.full((4, 4, 3), 128, np.uint8)
  cold, hot = explain.overlay(grey, np.zeros((4, 4))), explain.overlay(grey, np.ones((4, 4)))
  assert (cold[..., 2] > cold[..., 0]).all() and (hot[..., 0] > hot[..., 2]).all()
  with pytest.raises(ValueError):
    explain.overlay(image, np.zeros((24, 20)))


def test_explanation_grid_is_a_png():
  rng = np.random.default_rng(6)
  images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
  heatmaps = rng.random((10, 32, 32)).astype(np.float32)
  labels = np.array([0, 0, 0, 1, 1, 1, 0, 1, 0, 1])  # class 2 has no images at all
  predictions = np.array([0, 0, 1, 1, 0, 2, 0, 1, 2, 1])
  names = ["lymphocyte", "neutrophil", "platelet"]
  labelled = Image.open(io.BytesIO(explain.explanation_grid(images, heatmaps, labels, predictions, names)))
  unlabelled = Image.open(io.BytesIO(explain.explanation_grid(images, heatmaps, np.full(10, -1), predictions, names)))
  for picture in (labelled, unlabelled):
    assert picture.format == "PNG"
    assert 300 <= picture.size[0] <= 3000 and 300 <= picture.size[1] <= 3000
  assert labelled.size[1] == unlabelled.size[1] and labelled.size[0] > unlabelled.size[0]  # two column kinds
