#!/bin/bash
# The essential GPU check, sized for one device call (about 6 minutes on an H100, start-up not counted):
# ConvNeXt-T and -B bfloat16 train images/s for bloodcell_jax (each depthwise form `auto` may pick on a
# GPU: shift-add with autodiff's gradient, and with the hand-written VJP) against timm eager and
# torch.compile, MFU, compile time, peak memory, and the train-step cost of the `heavy` augmentation
# policy, printed as one table (and saved as gpu_check.md / .json in $RESULTS).
#
#   RESULTS=$OUT bash benchmarks/gpu_check.sh          (env: BATCH=256 SIZE=96 STEPS=10 REPEATS=3)
# benchmarks/gpu_suite.sh is the longer sweep (float32 rows, each augmentation op alone).
# On the lent machines (JAX, flax, optax, orbax, torch and timm installed; nothing can be fetched) carry
# the two missing packages as wheels: here `pip download --no-deps --only-binary=:all: --python-version
# 3.12 -d .whl ml-collections==1.1.0 dm-pix==0.4.5` (with .whl in .git/info/exclude), then run with
# carry [".whl"] and `pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
# PYTHONPATH=/tmp/site RESULTS=$OUT bash benchmarks/gpu_check.sh`.
set -u
RESULTS=${RESULTS:-benchmark_results}
BATCH=${BATCH:-256}
SIZE=${SIZE:-96}
STEPS=${STEPS:-10}
REPEATS=${REPEATS:-3}
TINY_CONFIG=${TINY_CONFIG:-configs/convnext_tiny.py}
BASE_CONFIG=${BASE_CONFIG:-configs/convnext_base.py}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
WORK=$(mktemp -d)
START=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - START )) s)"; }

stamp machine
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import jax, torch; print('jax', jax.__version__, 'torch', torch.__version__, jax.devices())"

jax_bench() {  # name, config, timeout, extra flags...
  local name=$1 config=$2 limit=$3; shift 3
  timeout "$limit" $PY main.py --mode=benchmark --config "$config" --config.data.image_size="$SIZE" \
    --bench_batch_sizes="$BATCH" --bench_dtypes=bfloat16 --bench_steps="$STEPS" --bench_repeats="$REPEATS" \
    --workdir "$WORK/$name" "$@" && cp "$WORK/$name/benchmark.json" "$RESULTS/jax_$name.json" \
    || echo "!! $name: failed or over its ${limit} s"
}
torch_bench() {  # model, drop_path, timeout
  timeout "$3" $PY benchmarks/torch_side_by_side.py --model "$1" --drop_path "$2" --batch "$BATCH" --size "$SIZE" \
    --dtype bfloat16 --modes eager,compile --steps "$STEPS" --repeats "$REPEATS" --out "$RESULTS/torch_$1.json" \
    || echo "!! timm $1: failed or over its $3 s"
}

stamp "JAX ConvNeXt-T, heavy augmentation on and off, depthwise shift-add with autodiff's gradient"
jax_bench tiny_autodiff "$TINY_CONFIG" 150 --config.data.augment=heavy \
  --config.model.depthwise_impl=shift_autodiff
stamp "JAX ConvNeXt-T, depthwise shift-add with the hand-written VJP"
jax_bench tiny_vjp "$TINY_CONFIG" 100 --config.data.augment=none --config.model.depthwise_impl=shift
stamp "JAX ConvNeXt-B"
jax_bench base_autodiff "$BASE_CONFIG" 120 --config.data.augment=none \
  --config.model.depthwise_impl=shift_autodiff
stamp "PyTorch ConvNeXt-T"
torch_bench convnext_tiny 0.1 100
stamp "PyTorch ConvNeXt-B"
torch_bench convnext_base 0.5 130
stamp summary
$PY benchmarks/gpu_check_table.py "$RESULTS" | tee "$RESULTS/gpu_check.md"
stamp done
