#!/bin/bash
# One prepared run for a GPU machine: every figure docs/benchmarks.md asks of an accelerator, in
# one go. JAX (main.py --mode=benchmark) for ConvNeXt-T (bf16 and fp32, the heavy augmentation
# policy on and off; the hand-written depthwise VJP against autodiff's) and ConvNeXt-B (bf16), then timm on PyTorch (eager and torch.compile) at the
# same batch, resolution and dtype, with the JAX/torch ratio; last, each augmentation op's own cost.
# Results land in $RESULTS.
#
#   RESULTS=/tmp/results bash benchmarks/gpu_suite.sh
#   (env: BATCH=256 SIZE=96 IMPL=timm TINY_CONFIG=configs/convnext_tiny.py BASE_CONFIG=configs/convnext_base.py)
set -u
RESULTS=${RESULTS:-benchmark_results}
BATCH=${BATCH:-256}
SIZE=${SIZE:-96}
IMPL=${IMPL:-timm}
STEPS=${STEPS:-10}
TINY_CONFIG=${TINY_CONFIG:-configs/convnext_tiny.py}
BASE_CONFIG=${BASE_CONFIG:-configs/convnext_base.py}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
WORK=$(mktemp -d)

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
$PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"

echo "== JAX ConvNeXt-T"
timeout 300 $PY main.py --mode=benchmark --config "$TINY_CONFIG" --config.data.image_size="$SIZE" \
  --config.data.augment=heavy --bench_batch_sizes="$BATCH" --bench_dtypes=bfloat16,float32 \
  --bench_steps="$STEPS" --workdir "$WORK/tiny" && cp "$WORK/tiny/benchmark.json" "$RESULTS/jax_convnext_tiny.json"

echo "== JAX ConvNeXt-T, the hand-written depthwise VJP (auto picks autodiff's gradient on GPUs until this is measured)"
timeout 150 $PY main.py --mode=benchmark --config "$TINY_CONFIG" --config.data.image_size="$SIZE" \
  --config.data.augment=none --config.model.depthwise_impl=shift --bench_batch_sizes="$BATCH" \
  --bench_dtypes=bfloat16 --bench_steps="$STEPS" --workdir "$WORK/tiny_vjp" \
  && cp "$WORK/tiny_vjp/benchmark.json" "$RESULTS/jax_convnext_tiny_dw_vjp.json"

echo "== PyTorch ConvNeXt-T"
timeout 240 $PY benchmarks/torch_side_by_side.py --impl "$IMPL" --model convnext_tiny --drop_path 0.1 \
  --batch "$BATCH" --size "$SIZE" --dtype bfloat16 --modes eager,compile --steps "$STEPS" \
  --jax_json "$WORK/tiny/benchmark.json" --out "$RESULTS/torch_convnext_tiny_bf16.json"
timeout 120 $PY benchmarks/torch_side_by_side.py --impl "$IMPL" --model convnext_tiny --drop_path 0.1 \
  --batch "$BATCH" --size "$SIZE" --dtype float32 --modes eager --steps "$STEPS" \
  --jax_json "$WORK/tiny/benchmark.json" --out "$RESULTS/torch_convnext_tiny_fp32.json"

echo "== JAX ConvNeXt-B"
timeout 200 $PY main.py --mode=benchmark --config "$BASE_CONFIG" --config.data.image_size="$SIZE" \
  --config.data.augment=none --bench_batch_sizes="$BATCH" --bench_dtypes=bfloat16 \
  --bench_steps="$STEPS" --workdir "$WORK/base" && cp "$WORK/base/benchmark.json" "$RESULTS/jax_convnext_base.json"

echo "== PyTorch ConvNeXt-B"
timeout 240 $PY benchmarks/torch_side_by_side.py --impl "$IMPL" --model convnext_base --drop_path 0.5 \
  --batch "$BATCH" --size "$SIZE" --dtype bfloat16 --modes eager,compile --steps "$STEPS" \
  --jax_json "$WORK/base/benchmark.json" --out "$RESULTS/torch_convnext_base_bf16.json"
echo "== Augmentation ops and policies alone (last: the figures above do not wait for it)"
timeout 150 $PY benchmarks/augment_cost.py --batch "$BATCH" --size "$SIZE" --out "$RESULTS/augment_cost.json"
echo "== done"
