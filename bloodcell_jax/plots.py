"""The evaluation report's figures as PNG bytes: training curves, confusion matrix, reliability
diagrams, most confidently misclassified images, accuracy against coverage.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, so no global figure state and no
display needed); every function is pure: numbers in, PNG bytes out.
"""

import io
import os

import numpy as np
from matplotlib.figure import Figure

DPI = 100
TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#d62728"
EMA_COLOUR = "#2ca02c"


def _png(fig: Figure) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  return buffer.getvalue()


def training_curves(rows: list[dict], best_epoch: int | None = None) -> bytes:
  """Loss, accuracy and learning rate per epoch from metrics.jsonl rows; `best_epoch` (0-based) marked."""
  epochs = [row["epoch"] + 1 for row in rows]

  def series(split, key):
    return [np.nan if row.get(split, {}).get(key) is None else row[split][key] for row in rows]

  fig = Figure(figsize=(13, 3.8))
  loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
  for ax, key, title in ((loss_ax, "loss", "class-weighted loss"), (acc_ax, "accuracy", "accuracy")):
    ax.plot(epochs, series("train", key), "o-", ms=3, color=TRAIN_COLOUR, label="train (augmented)")
    ax.plot(epochs, series("val", key), "o-", ms=3, color=VAL_COLOUR, label="validation")
    if any("val_ema" in row for row in rows):
      ax.plot(epochs, series("val_ema", key), "s-", ms=3, color=EMA_COLOUR, label="validation, weight average")
    ax.set_title(title)
  acc_ax.plot(epochs, series("val", "balanced_accuracy"), "--", color=VAL_COLOUR, alpha=0.6,
              label="validation, balanced")
  lr_ax.plot(epochs, [row["learning_rate"] for row in rows], "-", color="black")
  lr_ax.set_title("learning rate (end of epoch)")
  lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
  for ax in (loss_ax, acc_ax, lr_ax):
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if best_epoch is not None and ax is not lr_ax:
      ax.axvline(best_epoch + 1, color="grey", ls=":", lw=1, label="best checkpoint")
  acc_ax.legend(fontsize=8, loc="lower right")
  loss_ax.legend(fontsize=8, loc="upper right")
  fig.tight_layout()
  return _png(fig)


def confusion_matrix(matrix: np.ndarray, class_names: list[str]) -> bytes:
  """Two panels: counts, and rows normalised to the true class (recall on the diagonal)."""
  matrix = np.asarray(matrix)
  totals = matrix.sum(1, keepdims=True)
  normalised = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
  n = len(class_names)
  fig = Figure(figsize=(14, 6.2))
  for ax, values, title, fmt in zip(fig.subplots(1, 2), (matrix, normalised),
                                    ("counts", "share of each true class"), ("{:d}", "{:.2f}")):
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=values.max() if values.max() > 0 else 1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    high = values.max() * 0.6
    for i in range(n):
      for j in range(n):
        ax.text(j, i, fmt.format(values[i, j].item()), ha="center", va="center", fontsize=8,
                color="white" if values[i, j] > high else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix, {title}")
  fig.tight_layout()
  return _png(fig)


def _reliability_panel(top, bottom, bins: dict, title: str) -> None:
  edges = bins["edges"]
  centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
  filled = bins["count"] > 0
  top.bar(centres[filled], bins["accuracy"][filled], width=width[filled], color=VAL_COLOUR, alpha=0.75,
          edgecolor="black", lw=0.5, label="accuracy in bin")
  gap = bins["confidence"][filled] - bins["accuracy"][filled]
  top.bar(centres[filled], gap, bottom=bins["accuracy"][filled], width=width[filled], color="none",
          edgecolor="black", hatch="//", lw=0.5, label="gap to mean confidence")
  top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
  top.set_ylim(0, 1)
  top.set_ylabel("accuracy")
  top.set_title(title, fontsize=10)
  top.legend(fontsize=7, loc="upper left")
  share = bins["count"] / max(bins["count"].sum(), 1)
  bottom.bar(centres, share, width=width, color="grey", edgecolor="black", lw=0.5)
  bottom.set_ylabel("share of images")
  bottom.set_xlabel("confidence (top-class probability)")
  bottom.set_xlim(0, 1)


def reliability_diagram(bins: dict, ece: float) -> bytes:
  """Accuracy against confidence per bin (the diagonal is perfect calibration), with the share
  of examples in each bin below."""
  fig = Figure(figsize=(5.5, 6.5))
  top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
  _reliability_panel(top, bottom, bins, f"reliability diagram (expected calibration error {ece:.3f})")
  fig.tight_layout()
  return _png(fig)


def reliability_diagrams(panels: list[tuple[str, dict]]) -> bytes:
  """Several reliability diagrams side by side: (title, bins) each, e.g. before and after calibration."""
  fig = Figure(figsize=(4.6 * len(panels), 6.2))
  axes = fig.subplots(2, len(panels), sharex=True, gridspec_kw={"height_ratios": (3, 1)}, squeeze=False)
  for i, (title, bins) in enumerate(panels):
    _reliability_panel(axes[0, i], axes[1, i], bins, title)
  fig.tight_layout()
  return _png(fig)


def accuracy_coverage(curves: dict, operating_points: dict | None = None) -> bytes:
  """Accuracy on the images kept against the share kept, one line per ranking (name: (coverage,
  accuracy)); `operating_points` (name: (coverage, accuracy)) marks where the chosen thresholds sit."""
  fig = Figure(figsize=(6, 4.5))
  ax = fig.subplots()
  for name, (coverage, accuracy) in curves.items():
    ax.plot(coverage, accuracy, "-", lw=1.5, label=name)
  for name, (coverage, accuracy) in (operating_points or {}).items():
    ax.plot([coverage], [accuracy], "o", ms=7, mfc="none", mew=1.5, label=name)
  ax.set_xlabel("coverage (share of images kept)")
  ax.set_ylabel("accuracy on the kept images")
  ax.set_xlim(0, 1.01)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower left")
  ax.set_title("accuracy against coverage")
  fig.tight_layout()
  return _png(fig)


def misclassified_grid(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, class_names: list[str],
                       ids: np.ndarray | None = None, count: int = 24, columns: int = 6) -> bytes:
  """The `count` wrong predictions made with the highest confidence, most confident first."""
  predictions = probs.argmax(-1)
  wrong = np.flatnonzero(predictions != labels)
  confidence = probs.max(-1)
  chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
  rows = max(1, -(-len(chosen) // columns))
  fig = Figure(figsize=(columns * 1.9, rows * 2.25 + 0.4))
  axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
  for ax in axes:
    ax.axis("off")
  if not len(chosen):
    axes[0].text(0, 0.5, "no misclassified images", fontsize=12)
  for ax, index in zip(axes, chosen):
    ax.imshow(images[index], interpolation="nearest")
    ax.set_title(f"true {class_names[labels[index]]}\npred {class_names[predictions[index]]} "
                 f"{confidence[index]:.2f}", fontsize=8, color=VAL_COLOUR)
    if ids is not None:
      ax.text(0.5, -0.04, str(ids[index]).replace(os.sep, "/").split("/")[-1][-24:], transform=ax.transAxes, ha="center", va="top", fontsize=5)
  fig.suptitle(f"most confidently misclassified ({len(chosen)} of {len(wrong)} errors)", fontsize=11)
  fig.tight_layout()
  return _png(fig)
