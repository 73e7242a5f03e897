"""Where the time of a CPU train (or eval) step goes, op by op, from XLA's own profile.

  python benchmarks/op_profile.py --variant tiny --batch 32 --size 96 --step train --top 25
  python benchmarks/op_profile.py --variant tiny --xla_flags=--xla_cpu_experimental_ynn_fusion_type=
  python benchmarks/op_profile.py --config configs/efficientnet_lite0.py --batch 64 --augment config

Builds the step of benchmarks/cpu_step_ablation.py (ConvNeXt `--variant`, float32 unless `--dtype`, no augmentation,
one device), or that of any config file's model (randomly initialised), and traces a
few steps with jax.profiler and reads the XLA:CPU thunk events: each thunk logs "<hlo op>" around its
launch and "end: <hlo op>" when it completes (later, for thunks that run on the thread pool). An op's
interval is launch to completion; wall time in which k ops are in flight is split k ways, so the
rows add up to the covered wall time and the rest is runtime overhead / idle. Caveat: an op whose
successor is a YNNPACK dot logs its completion only when the dot ends, so it takes half the dot's
time in the split (elementwise ops are overstated, dots understated); the time with a dot in flight
is printed on its own for that reason. Ops are classified
from the optimised HLO (`compiled.as_text()`): opcode, fusion kind and library, fused opcodes, and
the op's JAX source path (layer, forward or backward).
"""

import argparse
import collections
import glob
import gzip
import importlib.util
import json
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTROL_FLOW = {"while", "conditional", "call"}  # their thunks contain other thunks' events
MODEL = "(?:ConvNeXt|EfficientNet|SimpleCNN)"  # the model classes' names, where an op's source path enters the model
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", default="tiny", help="ConvNeXt variant, unless --config is given")
  parser.add_argument("--config", help="a config file: its model, image size and dtype instead of ConvNeXt's")
  parser.add_argument("--augment", default="none", help="a policy, or `config` for the config's own")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, help="image size (default: the config's, else 96)")
  parser.add_argument("--step", choices=("train", "eval"), default="train")
  parser.add_argument("--dtype", help="compute dtype, e.g. bfloat16 (default: float32, or the config's)")
  parser.add_argument("--steps", type=int, default=5, help="profiled steps, after 2 warm-up and `steps` timed ones")
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before JAX loads")
  parser.add_argument("--hlo_out", help="also write the optimised HLO text here, to look ops up")
  return parser.parse_args()


def build_step(args):
  """(compiled step, its arguments, a function from outputs to next arguments), as cpu_step_ablation's child."""
  import jax.numpy as jnp
  from flax import jax_utils
  from bloodcell_jax import optim
  from bloodcell_jax.benchmark import synthetic_batch
  from bloodcell_jax.classes import NUM_CLASSES
  from bloodcell_jax.config import step_config
  from bloodcell_jax.models import create_model
  from bloodcell_jax.steps import create_train_state, init_variables, pmapped_steps, split_variables
  if args.config:
    spec = importlib.util.spec_from_file_location("profiled_config", args.config)
    spec.loader.exec_module(module := importlib.util.module_from_spec(spec))
    config = module.get_config()
    config.model.init_from = ""  # the trace does not depend on the weights' values
  else:
    from configs.accelerator import convnext_config
    config = convnext_config(args.variant)
    config.model.dtype, config.model.depthwise_impl = "float32", "shift"
  config.model.dtype = args.dtype or config.model.dtype
  args.size = args.size or (config.data.image_size if args.config else 96)
  config.data.image_size, config.train.batch_size = args.size, args.batch
  config.data.augment = config.data.augment if args.augment == "config" else args.augment
  model = create_model(config.model, NUM_CLASSES)
  params, model_state = split_variables(init_variables(model, args.size, 0))
  tx = optim.create_optimizer(config.optim, params, optim.learning_rate_schedule(config.optim, 100, 1))
  train_step, eval_step = pmapped_steps(model, tx, step_config(config))
  if args.step == "train":
    step, first = train_step, create_train_state(params, tx, 0, model_state)
    next_args = lambda out, prev: (out[0], *prev[1:])  # noqa: E731  (the state is donated)
  else:
    step, first = eval_step, {"params": params, **model_state}
    next_args = lambda out, prev: prev  # noqa: E731
  first, weights = jax_utils.replicate((first, jnp.ones(NUM_CLASSES)))
  step_args = (first, synthetic_batch(args.batch, args.size, 1), weights)
  return step.lower(*step_args).compile(), step_args, next_args


def run(compiled, step_args, next_args, steps):
  import jax
  for _ in range(steps):
    out = compiled(*step_args)
    step_args = next_args(out, step_args)
  jax.block_until_ready(out)
  return step_args


def parse_hlo(text):
  """{instruction name: (opcode, shape, operand names, attributes)} and {computation: Counter of its opcodes}."""
  instructions, computations, current = {}, collections.defaultdict(collections.Counter), None
  for line in text.splitlines():
    if line and not line.startswith(" ") and line.rstrip().endswith("{"):
      current = line.replace("ENTRY ", "").split()[0].lstrip("%")
    elif match := INSTRUCTION.match(line):
      name, shape, opcode, rest = match.groups()
      instructions[name] = (opcode, shape, re.findall(r"%([\w.\-]+)", rest.split("),")[0]), rest)
      computations[current][opcode] += 1
  return instructions, computations


def classify(name, instructions, computations):
  """(implementation category, model part) of one thunk's HLO instruction."""
  opcode, _, _, rest = instructions.get(name, ("?", "", [], ""))
  called = re.search(r"calls=%([\w.\-]+)", rest)
  fused = computations.get(called.group(1), collections.Counter()) if called else collections.Counter([opcode])
  source = re.search(r'op_name="([^"]*)"', rest)
  source = source.group(1) if source else ""
  path = re.search(rf".*{MODEL}\)*/(.*)|$", source).group(1) or ""  # eval: ConvNeXt/..., train: jvp(ConvNeXt)/...
  parts = [p for p in path.split("/") if not re.fullmatch(r"(stages|blocks)_\d+", p)]
  layer = parts[0] if len(parts) > 1 else ("block elementwise" if path else "outside model (loss, optimiser, ...)")
  part = f"{layer} {'bwd' if 'transpose(jvp(' in source else 'fwd'}" if path else layer
  dw = "conv_dw" in path or fused["slice"] >= 25  # a 7x7 shift-add reads 49 windows; LayerNorm may be fused in
  if "__ynn" in rest:
    kind = "YNN fusion: " + ("dot" if "dot" in fused else "reduce" if "reduce" in fused else "elementwise")
  elif "onednn" in rest.lower():
    kind = "oneDNN " + ("dot" if "dot" in fused or "matmul" in rest else "convolution" if "conv" in rest else "op")
  elif "dot" in fused:
    kind = "dot (DotThunk, Eigen)" if opcode == "dot" else "dot in loop fusion"
  elif "convolution" in fused:
    kind = "convolution (depthwise)" if "feature_group_count" in rest else "convolution (dense)"
  elif opcode in CONTROL_FLOW or opcode == "custom-call":
    kind = opcode
  elif set(fused) <= {"broadcast", "bitcast", "parameter", "constant"}:
    kind = "broadcast (materialised)"
  elif set(fused) <= {"copy", "transpose", "bitcast", "parameter", "slice", "concatenate", "pad", "reverse"}:
    kind = "copy/transpose/pad/slice"
  elif dw:
    kind = "depthwise kernel grad (reduce)" if "reduce" in fused else "depthwise shift-add (+fused)"
  elif "reduce" in fused or "reduce-window" in fused:
    kind = "reduction (LayerNorm)" if "norm" in path else "reduction"
  else:
    kind = "elementwise loop" + ("" if path else " (outside model)")
  return kind, part


def shape_summary(name, instructions):
  opcode, shape, operands, rest = instructions.get(name, ("?", "?", [], ""))
  ins = ", ".join(re.sub(r"\{[^}]*\}", "", instructions[o][1]) for o in operands[:3] if o in instructions)
  dims = re.search(r"lhs_contracting_dims=\{(\d*)\}, rhs_contracting_dims=\{(\d*)\}", rest)
  contract = f" contract {dims.group(1)},{dims.group(2)}" if opcode == "dot" and dims else ""
  return f"{re.sub(r'{[^}]*}', '', shape)} <- {ins}{', ...' if len(operands) > 3 else ''}{contract}"


def op_intervals(trace):
  """[(start, end, hlo op)] of every thunk event; ends matched to starts per op, in time order."""
  events = collections.defaultdict(list)
  for e in trace["traceEvents"]:
    if e.get("ph") == "X" and "hlo_op" in e.get("args", {}):
      events[e["args"]["hlo_op"]].append((e["ts"], 0, e["ts"] + e["dur"]))
    elif e.get("ph") == "X" and e.get("name", "").startswith("end: "):
      events[e["name"][5:]].append((e["ts"], 1, e["ts"] + e["dur"]))
  intervals = []
  for name, timeline in events.items():
    start = None
    for ts, is_end, finish in sorted(timeline):
      if not is_end:
        start = (ts, finish)
      elif start:  # inline thunks complete inside their launch event, others after it
        intervals.append((start[0], max(start[1], finish), name))
        start = None
  return intervals


def wall_shares(intervals):
  """{op: wall-time share}, the covered wall time and the time with two or more ops in flight."""
  points = sorted([(s, 1, i) for i, (s, _, _) in enumerate(intervals)] +
                  [(e, -1, i) for i, (_, e, _) in enumerate(intervals)])
  share, active, last, covered, overlap = collections.Counter(), set(), None, 0.0, 0.0
  for t, delta, i in points:
    if active and t > last:
      for j in active:
        share[intervals[j][2]] += (t - last) / len(active)
      covered += t - last
      overlap += (t - last) if len(active) > 1 else 0.0
    (active.add if delta > 0 else active.discard)(i)
    last = t
  return share, covered, overlap


def union_length(spans):
  """Total length covered by sorted (start, end) spans."""
  total, current = 0.0, None
  for start, end in spans:
    if current and start <= current[1]:
      current[1] = max(current[1], end)
    else:
      total += current[1] - current[0] if current else 0.0
      current = [start, end]
  return total + (current[1] - current[0] if current else 0.0)


def main():
  args = parse_args()
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
  sys.path.insert(0, ROOT)
  from bloodcell_jax import platform_setup  # selects the backend before JAX loads
  platform_setup.keep_freed_host_memory()  # as training does on a CPU
  import jax
  compiled, step_args, next_args = build_step(args)
  instructions, computations = parse_hlo(hlo := compiled.as_text())
  if args.hlo_out:
    with open(args.hlo_out, "w") as f:
      f.write(hlo)
  step_args = run(compiled, step_args, next_args, 2)
  start = time.perf_counter()
  step_args = run(compiled, step_args, next_args, args.steps)
  untraced = (time.perf_counter() - start) / args.steps * 1e3
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory):
      run(compiled, step_args, next_args, args.steps)
    with gzip.open(glob.glob(f"{directory}/**/*.trace.json.gz", recursive=True)[0]) as f:
      trace = json.load(f)
  intervals = [iv for iv in op_intervals(trace) if instructions.get(iv[2], ("?",))[0] not in CONTROL_FLOW]
  share, covered, overlap = wall_shares(intervals)
  window = max(e for _, e, _ in intervals) - min(s for s, _, _ in intervals)
  per_step = lambda us: us / 1e3 / args.steps  # noqa: E731
  total = per_step(window)
  print(f"{args.config or 'ConvNeXt-' + args.variant} {args.step} step, batch {args.batch}, {args.size}px, augment {args.augment!r}, "
        f"XLA_FLAGS='{os.environ['XLA_FLAGS']}', {os.cpu_count()} CPUs, JAX {jax.__version__}")
  print(f"step: {untraced:.0f} ms untraced, {total:.0f} ms traced ({args.steps} steps); op events cover "
        f"{per_step(covered):.0f} ms ({100 * covered / window:.1f}%), not covered (runtime overhead, idle) "
        f"{total - per_step(covered):.0f} ms ({100 - 100 * covered / window:.1f}%); 2+ ops in flight "
        f"{100 * overlap / window:.1f}%; {len(intervals) // args.steps} thunks/step")
  labels = {name: classify(name, instructions, computations) for name in share}
  dots = union_length(sorted((start, end) for start, end, name in intervals
                             if labels[name][0] == "YNN fusion: dot"))
  print(f"at least one YNN dot in flight: {per_step(dots):.0f} ms ({100 * dots / window:.1f}%)"
        " (the split below understates dots: an op's completion is logged late when a dot follows it at once)")
  groupings = (("category", lambda label: label[0], 0.0), ("model part", lambda label: label[1], 0.0),
               ("model part and category (>= 0.5% of the step)", lambda label: f"{label[1]}: {label[0]}", 0.005))
  for title, key, min_share in groupings:
    groups, counts = collections.Counter(), collections.Counter()
    for name, us in share.items():
      groups[key(labels[name])] += us
      counts[key(labels[name])] += 1
    print(f"\n{'by ' + title:<56} {'ms/step':>8} {'%step':>6} {'ops':>5}")
    for group, us in groups.most_common():
      if us < min_share * window:
        break
      print(f"{group:<56} {per_step(us):8.1f} {100 * us / window:6.1f} {counts[group]:5d}")
  print(f"\n{'top ops':<28} {'ms/step':>8} {'%step':>6}  {'category':<32} {'model part':<22} shapes")
  for name, us in share.most_common(args.top):
    kind, part = labels[name]
    print(f"{name:<28} {per_step(us):8.1f} {100 * us / window:6.1f}  {kind:<32} {part:<22} "
          f"{shape_summary(name, instructions)[:110]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
