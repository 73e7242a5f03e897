"""The augmentation library: every op keeps shape, dtype and range, is jit/vmap-compatible and
reproducible by key; policies parse, reject bad strings, mix labels correctly, and never run at eval."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bloodcell_jax.augment import IMAGE_OPS, NAMED, augment_batch, parse
from bloodcell_jax.augment import colour, degrade, filters, geometric, mixing, policies, sampling


def _images(n=6, size=24, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.random((n, size, size, 3)).astype(np.float32)
  return jnp.asarray(base)


def _smooth_image(size=32):
  """A smooth colour image (like a stained cell, unlike white noise, JPEG keeps it at quality 95)."""
  y, x = np.mgrid[0:size, 0:size] / size
  return jnp.asarray(np.stack([0.5 + 0.3 * np.sin(3 * x), 0.5 + 0.3 * np.cos(2 * y), 0.4 + 0.3 * x * y], -1),
                     jnp.float32)


def _dihedral_group(image):
  rotations = [np.rot90(image, k) for k in range(4)]
  return rotations + [np.rot90(image[:, ::-1], k) for k in range(4)]


def test_dihedral_outputs_are_flips_or_rotations_and_all_eight_occur():
  image = np.arange(5 * 5 * 3, dtype=np.float32).reshape(5, 5, 3)
  group = _dihedral_group(image)
  seen = set()
  for i in range(64):
    out = np.asarray(geometric.dihedral(jax.random.PRNGKey(i), jnp.asarray(image)))
    matches = [j for j, g in enumerate(group) if np.array_equal(out, g)]
    assert len(matches) == 1
    seen.add(matches[0])
  assert seen == set(range(8))


@pytest.mark.parametrize("name", sorted(IMAGE_OPS))
def test_every_op_keeps_shape_dtype_range_and_is_reproducible_under_jit_and_vmap(name):
  images = _images()
  keys = jax.random.split(jax.random.PRNGKey(3), images.shape[0])
  op = jax.jit(jax.vmap(functools.partial(IMAGE_OPS[name], magnitude=1.0, fill_mode="reflect")))
  out = op(keys, images)
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 and bool(jnp.isfinite(out).all())
  np.testing.assert_array_equal(out, op(keys, images))
  single = IMAGE_OPS[name](keys[1], images[1], 1.0, "reflect")  # unbatched, eager: same numbers
  np.testing.assert_allclose(single, out[1], atol=1e-5)


@pytest.mark.parametrize("name", ["affine", "rotate", "zoom", "brightness", "contrast", "stain", "gaussian_blur",
                                  "noise", "jpeg", "illumination"])
def test_random_ops_are_the_identity_at_magnitude_zero(name):
  image = _smooth_image()
  out = IMAGE_OPS[name](jax.random.PRNGKey(0), image, 0.0, "reflect")
  atol = {"jpeg": 0.04, "gaussian_blur": 0.01}.get(name, 1e-4)  # quality 95 / sigma 0.3 at m = 0
  np.testing.assert_allclose(out, image, atol=atol)


def test_bilinear_sampling_matches_hand_values_and_fill_modes():
  image = jnp.arange(4.0).reshape(2, 2, 1)  # [[0, 1], [2, 3]]
  ys, xs = jnp.array([0.5, 0.0, -1.0, -1.0]), jnp.array([0.5, 0.25, 0.0, 0.0])
  np.testing.assert_allclose(sampling.sample(image, ys[:2], xs[:2])[:, 0], [1.5, 0.25])
  assert float(sampling.sample(image, ys[2:], xs[2:], "constant", cval=9.0)[0, 0]) == 9.0
  assert float(sampling.sample(image, ys[2:], xs[2:], "reflect")[0, 0]) == 0.0  # row -1 mirrors row 0
  assert float(sampling.sample(image, jnp.array([5.0]), jnp.array([1.0]), "nearest")[0, 0]) == 3.0


def test_rotation_by_a_right_angle_equals_rot90():
  image = _images(1, 9)[0]
  quarter = jnp.array([[0.0, -1.0], [1.0, 0.0]])  # output (y, x) reads input (-x, y) about the centre
  out = sampling.affine(image, quarter, jnp.zeros(2))
  np.testing.assert_allclose(out, np.rot90(np.asarray(image), -1), atol=1e-5)


def test_stain_round_trip_without_jitter_and_jpeg_quality_tables():
  image = _smooth_image(16)
  np.testing.assert_allclose(colour.stain(jax.random.PRNGKey(0), image, 0.0), image, atol=1e-5)
  tables = degrade.jpeg_quality_tables(jnp.array(50.0))
  assert float(tables[0, 0, 0]) == 16 and float(tables[1, 7, 7]) == 99  # quality 50 = Annex K tables
  assert float(degrade.jpeg_quality_tables(jnp.array(100.0)).max()) == 1
  low = degrade.jpeg_compress(image, jnp.array(10.0))
  high = degrade.jpeg_compress(image, jnp.array(95.0))
  assert float(jnp.abs(low - image).mean()) > 2 * float(jnp.abs(high - image).mean())


def test_jpeg_error_is_as_large_as_a_real_encoders_at_the_same_quality():
  import io
  from PIL import Image
  image = np.asarray(_smooth_image(32))
  for quality in (50, 10):
    buffer = io.BytesIO()
    Image.fromarray((image * 255).round().astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    pil = np.asarray(Image.open(buffer), np.float32) / 255
    ours = np.asarray(degrade.jpeg_compress(jnp.asarray(image), jnp.array(float(quality))))
    assert 0.5 < np.abs(ours - image).mean() / np.abs(pil - image).mean() < 2.0


def test_equalize_spreads_a_narrow_histogram_over_the_range():
  image = jnp.asarray(np.linspace(0.4, 0.6, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3))
  out = colour.equalize(None, image)
  assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_mixup_and_cutmix_keep_labels_soft_and_consistent_with_pixels():
  images = jnp.stack([jnp.zeros((8, 8, 3)), jnp.ones((8, 8, 3))] * 4)
  targets = jax.nn.one_hot(jnp.array([0, 1] * 4), 8)
  for op in (mixing.mixup, mixing.cutmix):
    out, soft = op(jax.random.PRNGKey(1), images, targets, 1.0, 1.0)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    # image i is a blend of a black and a white image: its mean equals its "class 1" share
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), soft[:, 1], atol=1e-5)
  out, soft = mixing.mixup(jax.random.PRNGKey(1), images, targets, 0.0, 1.0)  # p = 0: unchanged
  np.testing.assert_array_equal(out, images)
  np.testing.assert_array_equal(soft, targets)


def test_policies_parse_and_bad_strings_name_the_problem():
  for name in NAMED:
    parse(name)
  policy = parse("randaugment(2, 9)")
  assert policy.randaugment_layers == 2 and abs(policy.randaugment_magnitude - 0.9) < 1e-9
  assert parse("rotate(0.5, 0.3), cutmix(1, 1.0)").entries == (("rotate", 0.5, 0.3), ("cutmix", 1.0, 1.0))
  assert parse("heavy").mixes and not parse("medium").mixes
  for bad, message in [("heavyy", "not understood"), ("blur(0.5, 0.5)", "unknown op"), ("rotate(2, 0.5)", "probability"),
                       ("rotate(0.5, 3)", "magnitude"), ("mixup(0.5, 0)", "alpha"), ("randaugment(2, 30)", "RandAugment")]:
    with pytest.raises(ValueError, match=message):
      parse(bad)


@pytest.mark.parametrize("policy", ["light", "heavy", "randaugment(2, 9)"])
def test_batch_policies_are_per_example_reproducible_and_preserve_dtype(policy):
  images = (np.random.default_rng(0).random((8, 32, 32, 3)) * 255).astype(np.uint8)
  targets = jax.nn.one_hot(np.arange(8), 8)
  run = jax.jit(lambda key, x, t: augment_batch(key, x, t, policy, "reflect"))
  a, ta = run(jax.random.PRNGKey(0), images, targets)
  b, tb = run(jax.random.PRNGKey(0), images, targets)
  c, _ = run(jax.random.PRNGKey(1), images, targets)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ta, tb)
  assert not np.array_equal(a, c)
  assert a.dtype == jnp.float32 and float(a.min()) >= 0 and float(a.max()) <= 1
  np.testing.assert_allclose(ta.sum(axis=1), 1.0, atol=1e-6)
  assert run._cache_size() == 1  # one compilation for both keys


def test_none_policy_only_rescales_and_unknown_policy_is_refused():
  images = (np.arange(2 * 4 * 4 * 3) % 256).astype(np.uint8).reshape(2, 4, 4, 3)
  targets = jax.nn.one_hot(np.arange(2), 8)
  out, soft = augment_batch(jax.random.PRNGKey(0), images, targets, "none")
  np.testing.assert_allclose(out, images / 255.0, atol=1e-7)
  np.testing.assert_array_equal(soft, targets)
  with pytest.raises(ValueError, match="augment policy"):
    augment_batch(jax.random.PRNGKey(0), images, targets, "heavier")


def _reference_correlate(image, kernel):
  """NumPy: mirrored edges (edge pixel repeated), kernel read as a correlation."""
  r = kernel.shape[0] // 2
  padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="symmetric")
  h, w = image.shape[:2]
  return sum(kernel[dy, dx] * padded[dy:dy + h, dx:dx + w] for dy in range(kernel.shape[0])
             for dx in range(kernel.shape[1]))


def test_per_example_convolution_matches_numpy_and_the_separable_form():
  rng = np.random.default_rng(4)
  images = rng.random((3, 11, 17, 3)).astype(np.float32)  # odd, non-square: the merged width*channel axis
  kernels = rng.random((3, 7, 7)).astype(np.float32)
  out = jax.jit(jax.vmap(filters.convolve))(images, kernels)
  for i in range(3):
    np.testing.assert_allclose(out[i], _reference_correlate(images[i], kernels[i]), rtol=1e-5, atol=1e-5)
  taps = rng.random((3, 5)).astype(np.float32)
  separable = jax.vmap(filters.convolve_separable)(images, taps)
  full = jax.vmap(filters.convolve)(images, jnp.einsum("ni,nj->nij", taps, taps))
  np.testing.assert_allclose(separable, full, rtol=1e-5, atol=1e-5)


def test_channel_mixing_is_the_matrix_product():
  image = jnp.asarray(np.random.default_rng(5).random((4, 6, 3)), jnp.float32)
  matrix = np.random.default_rng(6).random((3, 3)).astype(np.float32)
  np.testing.assert_allclose(colour.mix_channels(image, matrix), image @ matrix, rtol=1e-6, atol=1e-6)


def test_randaugment_layer_gives_each_example_the_op_its_key_draws():
  """Against the plain form: a vmapped switch over the ops with the example's split key."""
  images = _images(n=32, size=16, seed=7)
  keys = jax.random.split(jax.random.PRNGKey(8), 32)

  def one(key, image):
    k_choice, k_op = jax.random.split(key)
    ops = [(lambda k, x, name=name: x) if name == "identity" else
           functools.partial(IMAGE_OPS[name], magnitude=0.9, fill_mode="reflect") for name in policies.RANDAUGMENT_OPS]
    index = jax.random.randint(k_choice, (), 0, len(ops))
    return jax.lax.switch(index, ops, k_op, image), index

  expected, chosen = jax.jit(jax.vmap(one))(keys, images)
  out = jax.jit(lambda k, x: policies._randaugment_layer(k, x, 0.9, "reflect"))(keys, images)
  np.testing.assert_allclose(out, expected, atol=1e-6)
  assert len(set(np.asarray(chosen).tolist())) >= 8  # many different ops among 32 examples
