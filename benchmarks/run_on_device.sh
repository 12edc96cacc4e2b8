#!/usr/bin/env bash
# The one prepared GPU check (issues 4, 5, 6). A session with a GPU runs, from the repo root,
# through the device tool (timeout_s = budget + 30):
#
#     RTSEG_DEVICE_BUDGET_S=540 bash benchmarks/run_on_device.sh
#
# Carry (device tool `carry`): .whl (wheels the GPU image lacks: pycocotools, av — see below) and
# .official (a checkout of github dbolya/yolact's *.py files, never committed). Prepare them here (on a fresh
# machine first: printf '/.whl/\n/.official/\n' >> .git/info/exclude, so that git ignores both):
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl pycocotools==2.0.11 av==18.1.0
#     mkdir .official && git --git-dir /work/.mirror/dbolya+yolact/repo archive HEAD '*.py' | tar -x -C .official
#
# Stages (each with its own time limit). Logs and JSON are written to a work folder and packed into
# $OUT/results.tgz after every stage (at most 8 files come back, and a run cut off by the device tool
# still returns what its finished stages wrote):
# 0. wheels in .whl/ installed to /tmp/site
# 1. env.txt: GPU, driver, library versions, which optional imports work
# 2. RTSEG_REQUIRE_CUDA=1 pytest -m gpu (RTSEG_PYTEST_S limits it, default 240; RTSEG_PYTEST_K selects with -k),
#    and at the same time, if RTSEG_DEVICE_TRAIN_S > 0, the
#    demo model's GPU fine-tuning (README recipe with --init engines/yolact_demo.safetensors
#    --time-budget, at the shipped model's input size); the weights come back split in parts under 15 MiB
#    (join: cat yolact_demo.safetensors.part-* > engines/yolact_demo.safetensors)
# 3. benchmarks.train_step: one training step of the demo architecture without data loading
#    (RTSEG_TRAIN_STEP_S, default 90; 0 skips it)
#    benchmarks.host_copy_cost: CPU time of staging a 1080p frame, torch's copy vs numpy's (~10 s;
#    RTSEG_HOST_COPY=0 skips it)
#    benchmarks.gpu_fastpath: model latency per backend/batch, NMS / masks / overlay, whole engine per
#    1080p frame (RTSEG_BENCH_ARGS adds options, e.g. --presets yolact_base; RTSEG_FASTPATH=0 skips it)
# 4. benchmarks.official_side_by_side when .official/eval.py exists (RTSEG_SIDE_BY_SIDE_S, default 150)
# 5. benchmarks.pipeline_efficiency on a 1080p file of RTSEG_PIPELINE_FRAMES frames (default 300; was 150 up to
#    run 10, i.e. 1.5 s of pipeline at 100 FPS: ratios 0.80-0.86 in three identical runs), R-101 compiled, when PyAV imports
#    (RTSEG_PIPELINE_S, default 120; RTSEG_PIPELINE_ARGS adds options, e.g. --score-threshold 0 --compare-sinks;
#    RTSEG_PIPELINE_ARGS_B / _C: a second / third run with these options, e.g. --mp4-frame-threads 8; set but
#    empty: a run with the defaults, e.g. RTSEG_PIPELINE_ARGS="--decode-threads 4" RTSEG_PIPELINE_ARGS_B="")
# 6. benchmarks.engine_profile (per-stage wall, launches per call + torch.profiler table of one engine
#    call, model + post at batch 1 one-graph vs network graph + eager detection step) when
#    RTSEG_PROFILE_S > 0 (default 0; give it 240: it compiles five graphs of R-101, two of them again, which
#    inductor's FX graph cache shortens; RTSEG_PROFILE_BACKENDS=compile_fp16_captured alone: about 170 s on an
#    H100, run 12), first with our own CUDA graphs (capture=True), then inductor's
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out/device}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
pack() { tar czf "$OUT/results.tgz.tmp" -C "$WORK" . 2>/dev/null && mv -f "$OUT/results.tgz.tmp" "$OUT/results.tgz"; }
BUDGET="${RTSEG_DEVICE_BUDGET_S:-540}"
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

SITE=""
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && SITE=/tmp/site
fi
export PYTHONPATH="$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export RTSEG_ENGINE_CACHE="$(mktemp -d)"
PY="${PYTHON:-python3}"

{
  echo "== date"; date -u
  echo "== nvidia-smi"; nvidia-smi || true
  echo "== nvcc"; nvcc --version 2>/dev/null | tail -1 || echo "no nvcc"
  echo "== python"; "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for m in ("torch", "torchvision", "numpy", "cupy", "cv2", "pycocotools", "safetensors", "skimage", "av",
          "onnx", "onnxscript", "onnxruntime", "torch_tensorrt", "modelopt", "pytest"):
    try:
        mod = importlib.import_module(m)
        print(f"{m:16s} {getattr(mod, '__version__', 'ok')}")
    except Exception as exc:  # noqa: BLE001
        print(f"{m:16s} MISSING ({type(exc).__name__}: {str(exc)[:80]})")
import torch
print("cuda available", torch.cuda.is_available(), "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
try:
    import onnxruntime as ort
    print("ort providers", ort.get_available_providers())
except Exception:
    pass
EOF
} > "$WORK/env.txt" 2>&1
cat "$WORK/env.txt"
pack

# Demo-model training (background) while the GPU tests run.
TRAIN_S="${RTSEG_DEVICE_TRAIN_S:-0}"
TRAIN_PID=""
if [ "$TRAIN_S" -gt 0 ]; then
  TRAIN_DIR="$(mktemp -d)"
  TRAIN_SIZE="$(python3 -c "import json; print(json.load(open('engines/yolact_demo.json'))['config']['input_size'])")"
  echo "== training the demo model for ${TRAIN_S}s at ${TRAIN_SIZE} px"
  PYTHONUNBUFFERED=1 timeout --kill-after=10 $(( TRAIN_S + 60 )) "$PY" -m rtseg train --data synthetic \
    --backbone resnet18 --input-size "$TRAIN_SIZE" --fpn-channels 64 --num-prototypes 32 \
    --init engines/yolact_demo.safetensors --batch-size 16 --lr 4e-3 --warmup 100 --lr-steps 0.6,0.85 \
    --expand-max 1.5 --iters 20000 --time-budget "$(python3 -c "print($TRAIN_S / 60)")" \
    --workers 12 --threads 2 --val-every 0 --val-images 100 --ckpt-every 0 --half --device cuda \
    --work-dir "$TRAIN_DIR" --out "$TRAIN_DIR/yolact_demo.safetensors" > "$WORK/train.log" 2>&1 &
  TRAIN_PID=$!
fi

# GPU tests: at most RTSEG_PYTEST_S (default 240; 0 skips them) seconds, leaving the rest for the benchmark
# (33 tests took 142 s on an H100, run 13, and the interpreter's exit ~8 s more); RTSEG_PYTEST_K selects tests by
# pytest's -k expression (a rerun of the ones that failed). One by one in this process (`-o addopts=`: the device image
# has no pytest-xdist, and GPU tests side by side would time each other).
T_TEST="${RTSEG_PYTEST_S:-240}"
T_TEST=$(( $(left) - 30 < T_TEST ? $(left) - 30 : T_TEST ))
if [ "$T_TEST" -gt 0 ]; then
  echo "== pytest -m gpu ${RTSEG_PYTEST_K:+-k \"$RTSEG_PYTEST_K\" }(limit ${T_TEST}s)"
  RTSEG_REQUIRE_CUDA=1 timeout --signal=INT --kill-after=10 "$T_TEST" \
    "$PY" -m pytest -o addopts= -m gpu -q -rfEs -p no:cacheprovider --continue-on-collection-errors \
    ${RTSEG_PYTEST_K:+-k "$RTSEG_PYTEST_K"} tests > "$WORK/pytest_gpu.log" 2>&1
  echo "pytest exit code $?" >> "$WORK/pytest_gpu.log"
  tail -n 40 "$WORK/pytest_gpu.log"
  pack
fi

if [ -n "$TRAIN_PID" ]; then
  wait "$TRAIN_PID"; echo "train exit code $?" >> "$WORK/train.log"
  tail -n 8 "$WORK/train.log"
  if [ -f "$TRAIN_DIR/yolact_demo.safetensors" ]; then
    cp "$TRAIN_DIR/yolact_demo.json" "$OUT/"
    split -b 15M -d "$TRAIN_DIR/yolact_demo.safetensors" "$OUT/yolact_demo.safetensors.part-"
  fi
  rm -rf "$TRAIN_DIR"
fi

# Training step without data loading (device share of the s/it in train.log); RTSEG_TRAIN_STEP_S=0 skips it.
TRAIN_STEP_S="${RTSEG_TRAIN_STEP_S:-90}"
if [ "$TRAIN_STEP_S" -gt 0 ]; then
  echo "== train_step"
  timeout --kill-after=5 "$TRAIN_STEP_S" "$PY" -m benchmarks.train_step --device cuda --result train_step_gpu \
    > "$WORK/train_step.log" 2>&1
  echo "train_step exit code $?" >> "$WORK/train_step.log"
  cp benchmarks/results/train_step_gpu.json "$WORK/" 2>/dev/null
  tail -n 4 "$WORK/train_step.log"
  pack
fi

# CPU time of staging a 1080p frame for upload, torch's copy vs numpy's (~10 s; RTSEG_HOST_COPY=0 skips it).
if [ "${RTSEG_HOST_COPY:-1}" != 0 ] && [ "$(left)" -gt 60 ]; then
  echo "== host_copy_cost"
  timeout --kill-after=5 30 "$PY" -m benchmarks.host_copy_cost > "$WORK/host_copy_cost.log" 2>&1
  echo "host_copy_cost exit code $?" >> "$WORK/host_copy_cost.log"
  cp benchmarks/results/host_copy_cost_gpu.json "$WORK/" 2>/dev/null
  tail -n 4 "$WORK/host_copy_cost.log"
  pack
fi

# Benchmark: stop starting configurations 40 s before its end, hard-kill 10 s before it.
SIDE_S=0
[ -f .official/eval.py ] && SIDE_S="${RTSEG_SIDE_BY_SIDE_S:-150}"
PIPE_S=0
"$PY" -c "import av" 2>/dev/null && PIPE_S="${RTSEG_PIPELINE_S:-120}"
PROF_S="${RTSEG_PROFILE_S:-0}"
T_BENCH=$(( $(left) - 10 - SIDE_S - PIPE_S - PROF_S ))
[ "${RTSEG_FASTPATH:-1}" = 0 ] && T_BENCH=0  # RTSEG_FASTPATH=0 skips gpu_fastpath
if [ "$T_BENCH" -gt 60 ]; then
  echo "== gpu_fastpath (limit ${T_BENCH}s)"
  timeout --kill-after=5 "$T_BENCH" "$PY" -m benchmarks.gpu_fastpath --out "$WORK/gpu_fastpath.json" \
    --budget-s $(( T_BENCH - 40 )) ${RTSEG_BENCH_ARGS:-} > "$WORK/gpu_fastpath.log" 2>&1
  echo "gpu_fastpath exit code $?" >> "$WORK/gpu_fastpath.log"
  tail -n 30 "$WORK/gpu_fastpath.log"
  pack
else
  echo "no time left for the benchmark" | tee "$WORK/gpu_fastpath.log"
fi
T_SIDE=$(( $(left) - 5 - PIPE_S - PROF_S ))
[ "$T_SIDE" -gt 30 ] || SIDE_S=0
if [ "$SIDE_S" -gt 0 ]; then
  echo "== official_side_by_side (limit ${T_SIDE}s)"
  timeout --kill-after=5 "$T_SIDE" "$PY" -m benchmarks.official_side_by_side --official .official \
    --out "$WORK/side_by_side.json" > "$WORK/side_by_side.log" 2>&1
  echo "side_by_side exit code $?" >> "$WORK/side_by_side.log"
  tail -n 12 "$WORK/side_by_side.log"
  pack
fi
# One pipeline run with RTSEG_PIPELINE_ARGS, then one with RTSEG_PIPELINE_ARGS_B and one with _C when they are
# set, even empty (their files end in _b, _c); later compiles are shortened by inductor's cache.
for RUN in a b c; do
  if [ "$RUN" = a ]; then ARGS="${RTSEG_PIPELINE_ARGS:-}"; SUFFIX=""; else
    VAR="RTSEG_PIPELINE_ARGS_${RUN^^}"
    [ -n "${!VAR+set}" ] || break
    ARGS="${!VAR}"; SUFFIX="_$RUN"
  fi
  T_PIPE=$(( $(left) - 15 - PROF_S ))
  [ "$T_PIPE" -gt 30 ] || PIPE_S=0
  [ "$PIPE_S" -gt 0 ] || break
  echo "== pipeline_efficiency 1080p $ARGS (limit ${T_PIPE}s)"
  timeout --kill-after=5 "$T_PIPE" "$PY" benchmarks/pipeline_efficiency.py --device cuda --size 1920x1080 \
    --preset yolact_base --backend compile --frames "${RTSEG_PIPELINE_FRAMES:-300}" --result "pipeline_efficiency_gpu$SUFFIX" $ARGS \
    > "$WORK/pipeline$SUFFIX.log" 2>&1
  echo "pipeline exit code $?" >> "$WORK/pipeline$SUFFIX.log"
  cp "benchmarks/results/pipeline_efficiency_gpu$SUFFIX.json" "$WORK/" 2>/dev/null
  tail -n 6 "$WORK/pipeline$SUFFIX.log"
  pack
done
T_PROF=$(( $(left) - 10 ))
[ "$T_PROF" -gt 30 ] || PROF_S=0
if [ "$PROF_S" -gt 0 ]; then
  echo "== engine_profile (limit ${T_PROF}s)"
  timeout --kill-after=5 "$T_PROF" "$PY" -m benchmarks.engine_profile --out "$WORK/engine_profile.json" \
    --backends ${RTSEG_PROFILE_BACKENDS:-compile_fp16_captured compile_fp16 eager_fp16_cl} > "$WORK/engine_profile.log" 2>&1
  echo "engine_profile exit code $?" >> "$WORK/engine_profile.log"
  head -n 3 "$WORK/engine_profile.log"
fi
rm -rf "$RTSEG_ENGINE_CACHE"
pack
rm -rf "$WORK"
echo "== done in $(( $(date +%s) - START )) s; files in $OUT"
