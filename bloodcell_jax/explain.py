"""Class-activation maps by Grad-CAM (Selvaraju et al. 2017): where in an image lies the evidence
for a class, so that a reader can see whether a model looks at the cell or at the background,
the stain or the slide's edge.

Grad-CAM weighs each channel of a stage's output by the spatial mean of the gradient of the class's
logit with respect to it, sums the channels, keeps the positive part and upsamples. Any stage can
be asked for (`models.taps`); the default is the deepest stage with stride at most 16 (6x6 at 96
pixels, the stage before last in ConvNeXt, EfficientNet and MobileNetV3). The last stage (stride
32) leaves 3x3 at 96 pixels: on a MobileNetV3 trained on PBC cells its peak fell in the central
disc that holds the cell (28% of the frame) for 25% of held-out cells, no better than chance, where
the stride-16 stage's did for 86% (docs/results.md, "Explanations"). Each map is scaled by its own
maximum, so maps show where, not how much, and cannot be compared in strength across images; a map
that is zero everywhere means no positive evidence for that class at that stage.
"""

import functools
import io
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from flax import linen as nn
from matplotlib.figure import Figure

from bloodcell_jax.models import taps
from bloodcell_jax.plots import DPI, VAL_COLOUR
from bloodcell_jax.steps import normalize

PREDICTED = -1  # in `classes`: explain the class the model predicts


def _forward(model: nn.Module, variables: dict, x: jax.Array, stage: int, delta: jax.Array | None = None):
  """(logits, stage `stage`'s output) in evaluation mode, with `delta` added to that output; `stage`
  counts from 0 (negative: from the last)."""
  if delta is not None:
    variables = {**variables, taps.INTERMEDIATES: {taps.stage_delta(stage): delta}}
  logits, state = model.apply(variables, x, train=False, mutable=[taps.INTERMEDIATES])
  return logits, state[taps.INTERMEDIATES][taps.STAGES][stage]


MAX_STRIDE = 16  # the default stage: the deepest whose map is at least 1/16 of the image's side


def default_stage(stage_shapes, image_size: int) -> int:
  """The deepest stage with stride at most MAX_STRIDE (6x6 at 96 pixels), else the first."""
  fine = [i for i, shape in enumerate(stage_shapes) if shape[1] * MAX_STRIDE >= image_size]
  return max(fine) if fine else 0


def feature_map_gradients(model: nn.Module, variables: dict, x: jax.Array, classes: jax.Array,
                          stage: int | None = None):
  """(logits, feature map, d logit[class] / d feature map, classes) for normalised images `x` and
  the output of stage `stage` (None: `default_stage`), in one forward and backward pass; `classes`
  (B,) int with -1 for the predicted class, returned resolved.

  The gradient of the sum over the batch of the chosen logits is each example's own gradient, since
  examples do not interact in evaluation mode (BatchNorm uses its running statistics). A class out
  of range selects nothing: its gradient, and so its map, is zero.
  """
  shapes = jax.eval_shape(lambda: model.apply(variables, x, train=False, mutable=[taps.INTERMEDIATES])[1])
  stage_shapes = [s.shape for s in shapes[taps.INTERMEDIATES][taps.STAGES]]
  stage = default_stage(stage_shapes, x.shape[1]) if stage is None else stage % len(stage_shapes)
  template = shapes[taps.INTERMEDIATES][taps.STAGES][stage]

  def chosen_logits(delta):
    logits, fmap = _forward(model, variables, x, stage, delta)
    chosen = jnp.where(classes < 0, jnp.argmax(logits, -1), classes).astype(jnp.int32)
    return (logits * jax.nn.one_hot(chosen, logits.shape[-1], dtype=logits.dtype)).sum(), (logits, fmap, chosen)

  gradients, (logits, fmap, chosen) = jax.grad(chosen_logits, has_aux=True)(
      jnp.zeros(template.shape, template.dtype))
  return logits, fmap, gradients, chosen


def _grad_cam(model: nn.Module, mean: tuple, std: tuple, stage: int | None, variables: dict, images: jax.Array,
              classes: jax.Array):
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
  batch, height, width, _ = images.shape
  classes = jnp.broadcast_to(jnp.asarray(classes, jnp.int32), (batch,))
  _, fmap, gradients, chosen = feature_map_gradients(model, variables, normalize(images, mean, std), classes, stage)
  weights = gradients.astype(jnp.float32).mean(axis=(1, 2))
  cam = nn.relu(jnp.einsum("bhwc,bc->bhw", fmap.astype(jnp.float32), weights, precision=jax.lax.Precision.HIGHEST))
  cam = jnp.maximum(jax.image.resize(cam, (batch, height, width), "bilinear"), 0.0)
  peak = cam.max(axis=(1, 2), keepdims=True)
  return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0).astype(jnp.float32), chosen


def _floats(values) -> tuple:
  """Mean and std as a hashable tuple, so they can be static arguments."""
  return tuple(float(v) for v in np.ravel(values))


_grad_cam_jitted = jax.jit(_grad_cam, static_argnums=(0, 1, 2, 3))  # one compilation per model and shape


def make_grad_cam(model: nn.Module, mean, std, stage: int | None = None):
  """A jitted `(variables, images uint8 (B, H, W, 3), classes int32 (B,)) -> (heatmaps, classes)`;
  a class of -1 explains the predicted class, so one compiled function serves both uses."""
  return jax.jit(functools.partial(_grad_cam, model, _floats(mean), _floats(std), stage))


def grad_cam(model: nn.Module, variables: dict, images, mean, std, classes=None, stage: int | None = None
             ) -> tuple[jax.Array, jax.Array]:
  """Grad-CAM maps float32 (B, H, W) in [0, 1] (each scaled by its maximum) and the explained
  classes int32 (B,): `classes`, or the predicted ones where it is None or -1."""
  images = jnp.asarray(images)
  batch = images.shape[:1]
  classes = jnp.full(batch, PREDICTED, jnp.int32) if classes is None else jnp.asarray(classes, jnp.int32)
  if classes.shape != batch:
    raise ValueError(f"classes must have shape {batch}, got {classes.shape}")
  num_classes = getattr(model, "num_classes", None)
  given = np.asarray(classes)
  if (given < PREDICTED).any() or (num_classes is not None and (given >= num_classes).any()):
    raise ValueError(f"classes must be -1 (predicted) or in [0, {num_classes}), got {given.tolist()}")
  return _grad_cam_jitted(model, _floats(mean), _floats(std), stage, variables, images, classes)


def overlay(image, heatmap, alpha: float = 0.45) -> np.ndarray:
  """uint8 (H, W, 3): the heat map in the "jet" colours (blue cold, red hot) blended with weight
  `alpha` over the whole image, so a zero map tints the image dark blue rather than hiding it."""
  image, heatmap = np.asarray(image), np.nan_to_num(np.asarray(heatmap, np.float32))
  if image.ndim != 3 or image.shape[-1] != 3 or image.shape[:2] != heatmap.shape:
    raise ValueError(f"need an image (H, W, 3) and a heat map (H, W), got {image.shape} and {heatmap.shape}")
  pixels = image.astype(np.float32) * (255.0 if np.issubdtype(image.dtype, np.floating) else 1.0)
  colours = matplotlib.colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
  return np.clip(np.rint((1.0 - alpha) * pixels + alpha * colours), 0, 255).astype(np.uint8)


def _png(fig: Figure) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  return buffer.getvalue()


def _bare(ax) -> None:
  """No ticks or frame, but (unlike axis("off")) a y label still shows: the row's class name."""
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_visible(False)


def explanation_grid(images, heatmaps, labels, predictions, class_names: Sequence[str], per_class: int = 2) -> bytes:
  """PNG: one row per class; up to `per_class` correctly and up to `per_class` wrongly classified
  images of that true class (first ones in the given order), each as the image and its Grad-CAM
  overlay. With all `labels` -1 (unlabelled) rows are predicted classes and there is one kind of
  column; otherwise images labelled -1 are left out."""
  images, heatmaps = np.asarray(images), np.asarray(heatmaps)
  labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
  n = len(class_names)
  if not len(images) == len(heatmaps) == len(labels) == len(predictions):
    raise ValueError(f"images, heatmaps, labels, predictions differ in length: {len(images)}, {len(heatmaps)}, "
                     f"{len(labels)}, {len(predictions)}")
  if per_class < 1 or (predictions < 0).any() or (predictions >= n).any() or (labels >= n).any():
    raise ValueError(f"need per_class >= 1 and classes below {n} (labels -1 for unlabelled)")
  if (labels >= 0).any():
    kinds = (("correct", lambda c: (labels == c) & (predictions == c)),
             ("misclassified", lambda c: (labels == c) & (predictions != c)))
    layout = f"per true class, up to {per_class} correct then up to {per_class} misclassified"
  else:
    kinds = (("predicted", lambda c: predictions == c),)
    layout = f"unlabelled, per predicted class, up to {per_class}"
  columns = 2 * per_class * len(kinds)
  fig = Figure(figsize=(columns * 1.45 + 0.5, n * 1.75 + 0.6))
  axes = np.asarray(fig.subplots(n, columns, squeeze=False))
  for ax in axes.ravel():
    _bare(ax)
  for c, name in enumerate(class_names):
    axes[c, 0].set_ylabel(name, fontsize=9)
    for k, (kind, select) in enumerate(kinds):
      chosen = np.flatnonzero(select(c))[:per_class]
      if not len(chosen):
        axes[c, 2 * k * per_class].text(0.5, 0.5, f"none\n{kind}", ha="center", va="center", fontsize=7,
                                        color="grey", transform=axes[c, 2 * k * per_class].transAxes)
      for slot, index in enumerate(chosen):
        image_ax, overlay_ax = axes[c, 2 * (k * per_class + slot)], axes[c, 2 * (k * per_class + slot) + 1]
        image_ax.imshow(images[index], interpolation="nearest")
        overlay_ax.imshow(overlay(images[index], heatmaps[index]), interpolation="nearest")
        wrong = labels[index] >= 0 and labels[index] != predictions[index]
        truth = f"true {class_names[labels[index]]} / " if labels[index] >= 0 else ""
        # Left-aligned, the title runs on over the pair's map, so long class names do not collide.
        image_ax.set_title(f"{truth}pred {class_names[predictions[index]]}", fontsize=7, loc="left",
                           color=VAL_COLOUR if wrong else "black")
  fig.suptitle(f"Grad-CAM of the predicted class ({layout}; image, then its map)", fontsize=10)
  fig.tight_layout()
  return _png(fig)
