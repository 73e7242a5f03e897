"""One Markdown table from the files benchmarks/gpu_check.sh writes (jax_*.json, torch_*.json).

  python benchmarks/gpu_check_table.py RESULTS_DIR
"""

import json
import os
import sys

ROWS = (  # (model, label, file, torch file)
    ("ConvNeXt-T", "bloodcell_jax, shift-add, autodiff gradient", "jax_tiny_autodiff.json", "torch_convnext_tiny.json"),
    ("ConvNeXt-T", "bloodcell_jax, shift-add, hand-written VJP", "jax_tiny_vjp.json", "torch_convnext_tiny.json"),
    ("ConvNeXt-B", "bloodcell_jax, shift-add, autodiff gradient", "jax_base_autodiff.json", "torch_convnext_base.json"),
)


def _load(directory: str, name: str) -> dict | None:
  path = os.path.join(directory, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _torch_rates(report: dict | None) -> dict:
  return {} if report is None else {row["mode"]: row for row in report["results"]}


def table(directory: str) -> str:
  lines = ["| model | implementation | bf16 train img/s | / timm eager | / torch.compile | MFU | compile s | peak GiB |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
  notes, device = [], None
  for model, label, jax_file, torch_file in ROWS:
    report = _load(directory, jax_file)
    torch_rows = _torch_rates(_load(directory, torch_file))
    if report is None:
      lines.append(f"| {model} | {label} | missing ({jax_file}) | | | | | |")
      continue
    device = device or f"{report['environment']['device_kind']}, JAX {report['environment']['jax']}"
    row = report["results"][0]
    plain = row["train_augment_none"]
    rate = plain["images_per_s"]
    ratio = {mode: f"{rate / torch_rows[mode]['images_per_s']:.2f}x" if mode in torch_rows else "n/a"
             for mode in ("eager", "compile")}
    mfu = f"{100 * plain['mfu']:.1f}%" if plain.get("mfu") else "n/a"
    memory = row.get("peak_device_memory_bytes")
    lines.append(f"| {model} | {label} | {rate:.0f} | {ratio['eager']} | {ratio['compile']} | {mfu} | "
                 f"{plain['compile_s']:.1f} | {memory / 2**30:.1f} |" if memory else
                 f"| {model} | {label} | {rate:.0f} | {ratio['eager']} | {ratio['compile']} | {mfu} | "
                 f"{plain['compile_s']:.1f} | n/a |")
    heavy = row.get("train_augment_heavy")
    if heavy:
      notes.append(f"{model} `heavy` augmentation: {heavy['images_per_s']:.0f} img/s with it, {rate:.0f} without: "
                   f"{100 * (1 - heavy['images_per_s'] / rate):.1f}% of the train step (goal <= 5%)")
  for model, torch_file in (("ConvNeXt-T", "torch_convnext_tiny.json"), ("ConvNeXt-B", "torch_convnext_base.json")):
    for mode, row in _torch_rates(_load(directory, torch_file)).items():
      memory = row.get("peak_memory_bytes")
      lines.append(f"| {model} | timm {mode} | {row['images_per_s']:.0f} | | | | {row['first_step_s']:.1f} "
                   f"(first step) | {memory / 2**30:.1f} |" if memory else
                   f"| {model} | timm {mode} | {row['images_per_s']:.0f} | | | | {row['first_step_s']:.1f} | n/a |")
  return "\n".join([f"Device: {device or 'unknown'}", ""] + lines + [""] + notes)


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: gpu_check_table.py RESULTS_DIR")
  print(table(sys.argv[1]))
