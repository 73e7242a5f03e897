"""The same ConvNeXt train step in PyTorch, timed like `main.py --mode=benchmark`, for a side-by-side.

What a user would otherwise run: timm's ConvNeXt (channels_last), class-weighted cross-entropy,
Lion (timm.optim.Lion, same betas and decoupled weight decay), gradient clipping at 1.0, uint8 batch
normalised on the device; eager and `torch.compile`, float32 or bf16 autocast. Synthetic data, warm-up
steps excluded, `synchronize` before each clock read, median and spread over repeats.

  python benchmarks/torch_side_by_side.py --model convnext_tiny --batch 64 --size 96 --dtype bfloat16 \
      --modes eager,compile --jax_json checkpoints/convnext_tiny/benchmark.json

With --jax_json (the file `--mode=benchmark` writes) it prints JAX over PyTorch for the same batch,
resolution and dtype. `--impl auto` (the default) uses timm where it imports, else Hugging Face
transformers' ConvNextForImageClassification (the same architecture), and says which. Where PyPI's
torchvision does not load beside the CPU PyTorch ("operator torchvision::nms does not exist"), the
tests' stand-in for torchvision (tests/timm_reference.py; timm's model code never calls it) lets both
import, as in the README's dev install.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from bloodcell_jax.benchmark import time_steps  # noqa: E402  (the loop main.py --mode=benchmark times with)
from timm_reference import stand_in_for_broken_torchvision  # noqa: E402

VARIANTS = {  # depths, dims (timm's convnext_*)
    "convnext_atto": ([2, 2, 6, 2], [40, 80, 160, 320]),
    "convnext_tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
    "convnext_small": ([3, 3, 27, 3], [96, 192, 384, 768]),
    "convnext_base": ([3, 3, 27, 3], [128, 256, 512, 1024]),
}


def choose_impl(impl: str) -> tuple[str, str]:
  """("timm" or "hf", its version): the asked-for reference, or with "auto" the first that imports.
  SystemExit with one line saying what to install where none does."""
  stand_in_for_broken_torchvision()
  errors = []
  for name, module in (("timm", "timm"), ("hf", "transformers")):
    if impl not in ("auto", name):
      continue
    try:
      return name, __import__(module).__version__
    except Exception as e:  # noqa: BLE001  (a broken install raises more than ImportError)
      errors.append(f"{module}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
  raise SystemExit(f"torch_side_by_side.py: no PyTorch ConvNeXt reference imports ({'; '.join(errors)}); "
                   "pip install -r requirements-dev.txt")


def build_model(impl: str, name: str, drop_path: float, num_classes: int = 8) -> torch.nn.Module:
  if impl == "timm":
    import timm
    return timm.create_model(name, num_classes=num_classes, drop_path_rate=drop_path)
  from transformers import ConvNextConfig, ConvNextForImageClassification
  depths, dims = VARIANTS[name]
  model = ConvNextForImageClassification(ConvNextConfig(depths=depths, hidden_sizes=dims, num_labels=num_classes,
                                                        drop_path_rate=drop_path))
  forward = model.forward
  model.forward = lambda x: forward(pixel_values=x).logits
  return model


def build_optimizer(params, lr: float):
  try:
    from timm.optim import Lion
    return Lion(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.05)
  except ImportError:  # no timm: AdamW has the same memory traffic shape (one more state tensor)
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.05)


class Pending:
  """A step's loss for `time_steps`: `jax.block_until_ready` calls a leaf's own `block_until_ready()`,
  here a read of the loss and, on CUDA, a synchronize, so steps within a repeat still run unsynchronised."""

  def __init__(self, loss: torch.Tensor, device: torch.device):
    self.loss, self.device = loss, device

  def block_until_ready(self):
    self.loss.item()
    if self.device.type == "cuda":
      torch.cuda.synchronize()
    return self


def time_train(args, mode: str, device: torch.device) -> dict:
  torch.manual_seed(0)
  model = build_model(args.impl, args.model, args.drop_path).to(device).to(memory_format=torch.channels_last)
  model.train()
  optimizer = build_optimizer(model.parameters(), 1e-4)
  weights = torch.rand(8, device=device) + 0.5
  loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
  mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
  std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
  images = torch.randint(0, 256, (args.batch, args.size, args.size, 3), dtype=torch.uint8, device=device)
  labels = torch.randint(0, 8, (args.batch,), device=device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
  forward = torch.compile(model) if mode == "compile" else model

  def step():
    x = images.permute(0, 3, 1, 2).float().sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = loss_fn(forward(x).float(), labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return Pending(loss, device)

  start = time.perf_counter()
  step().block_until_ready()
  first_step_s = time.perf_counter() - start
  rates = [args.batch / t for t in time_steps(step, args.steps, args.repeats, args.warmup)]
  result = {"images_per_s": statistics.median(rates), "images_per_s_min": min(rates),
            "images_per_s_max": max(rates), "first_step_s": first_step_s}
  if device.type == "cuda":
    result["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
  return result


def jax_figure(path: str, batch: int, dtype: str) -> float | None:
  with open(path) as f:
    report = json.load(f)
  for row in report["results"]:
    if row["global_batch"] == batch and row["dtype"] == dtype:
      return row["train_augment_none"]["images_per_s"]
  return None


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="convnext_tiny", choices=sorted(VARIANTS))
  parser.add_argument("--impl", default="auto", choices=("auto", "timm", "hf"))
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--size", type=int, default=96)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--modes", default="eager,compile")
  parser.add_argument("--drop_path", type=float, default=0.1)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  parser.add_argument("--jax_json", help="benchmark.json from main.py --mode=benchmark, for the ratio")
  parser.add_argument("--out", help="write the results here as JSON")
  args = parser.parse_args()
  device = torch.device(args.device)
  args.impl, version = choose_impl(args.impl)
  env = {"torch": torch.__version__, "python": platform.python_version(), "impl": args.impl,
         "impl_version": version, "threads": torch.get_num_threads(),
         "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"}
  print(f"reference: {'timm' if args.impl == 'timm' else 'transformers'} {version}, PyTorch {torch.__version__}, "
        f"{env['device']}, {env['threads']} threads", flush=True)
  jax_rate = jax_figure(args.jax_json, args.batch, args.dtype) if args.jax_json else None
  rows = []
  for mode in args.modes.split(","):
    result = {"model": args.model, "mode": mode, "batch": args.batch, "size": args.size, "dtype": args.dtype,
              **time_train(args, mode, device)}
    if jax_rate:
      result["jax_images_per_s"] = jax_rate
      result["jax_over_torch"] = jax_rate / result["images_per_s"]
    rows.append(result)
    ratio = f"  JAX/torch {result['jax_over_torch']:.2f}x" if jax_rate else ""
    print(f"{args.model} {mode:<8} b{args.batch} {args.size}px {args.dtype:<8} "
          f"{result['images_per_s']:9.1f} img/s [{result['images_per_s_min']:.1f}-{result['images_per_s_max']:.1f}]"
          f"  first step {result['first_step_s']:.1f}s{ratio}", flush=True)
    if args.out:  # after each mode: a later one that runs out of time keeps the earlier rows
      with open(args.out, "w") as f:
        json.dump({"environment": env, "results": rows}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
