#!/usr/bin/env bash
# The GPU check, one prepared run inside 8 minutes on the GPU machine (../shared/gpu.md):
#
#   1. the GPU test tier: `pytest -m gpu tests/test_gpu.py` (every method on tiny random Llama and
#      LLaVA-Next models on CUDA, bitsandbytes NF4/INT8, hf evaluation and the speed measurement);
#   2. bench/gpu_layers.py: GPTQ and AWQ at the LLaMA-3-70B layer shape, 1 and 2 layers,
#      extrapolated to 80;
#   3. bench/gpu_gptq_shapes.py: GPTQ W4A16 at the LLaMA-3-8B shape, factory vs plain llm-compressor
#      (16 x 2048 calibration tokens here, to fit the budget; the README's 227 s is 128 x 2048);
#   4. (only when named) lowbit-8b-layers: bench/gpu_layers.py at the LLaMA-3-8B layer shape, one
#      layer, GPTQ 2-bit beside BiLLM and AutoRound (200 iterations): their cost against GPTQ's.
#   5. (only when named) dbllm-8b-layers: bench/gpu_layers.py at the LLaMA-3-8B layer shape, 1 and 2
#      layers, DB-LLM 2-bit: 16 generated sequences of 2048 tokens and 20 distillation steps, timed apart
#      (generation, seconds per step) and peak GPU memory, to scale to its recipe (4096 x 1024, 2000 steps).
#
# Parts 1-3 run by default; name parts to run only those: `bash bench/gpu_check.sh lowbit-8b-layers`.
#
# Each part has its own time limit (they add up to under 8 minutes); one that runs out is recorded as
# timed out and the next one starts. Results go to $RESULTS_DIR (default bench/results/), in a folder
# named after the date and the device: summary.txt (device, each part's exit status and seconds), the
# logs, the tests' JUnit XML and the benches' JSON.
#
# Wheels: when the image lacks the project's packages, put them in .whl/ (see ../shared/gpu.md); they
# are installed with --no-index --no-deps into /tmp/site, which goes first on PYTHONPATH.
#
#   bash bench/gpu_check.sh                      # on the GPU machine
#   RESULTS_DIR="$OUT" bash bench/gpu_check.sh   # through the device tool: results come back from $OUT
set -uo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false LLM_COMPRESSOR_LOG_LEVEL=WARNING

if [ -d .whl ] && ! "$PY" -c "import llmcompressor, compressed_tensors" 2>/dev/null; then
  "$PY" -m pip install --quiet --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

device="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")')"
slug="$(printf '%s' "$device" | tr -c 'A-Za-z0-9._-' '-')"
out="${RESULTS_DIR:-bench/results}/gpu-check-$(date -u +%Y-%m-%dT%H%M%SZ)-$slug"
mkdir -p "$out"
summary="$out/summary.txt"
{
  echo "device: $device"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  "$PY" -c 'import sys, torch, transformers; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}")'
} > "$summary"

PARTS=" ${*:-gpu-tests 70b-layers gptq-8b-shape} "

part() {  # part NAME LIMIT_S COMMAND...: run with a time limit, log it, record status and seconds
  local name="$1" limit="$2"
  shift 2
  [[ "$PARTS" == *" $name "* ]] || return 0
  local started=$SECONDS
  echo "== $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local status=$?
  local verdict="exit $status"
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then verdict="timed out after ${limit} s"; fi
  echo "$name: $verdict, $((SECONDS - started)) s" | tee -a "$summary"
  tail -n 25 "$out/$name.log"
}

part gpu-tests 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml "$out/gpu-tests.xml" tests/test_gpu.py
part 70b-layers 160 "$PY" bench/gpu_layers.py --depths 1,2 --samples 16 --seq-len 2048 --json "$out/70b-layers.json"
part gptq-8b-shape 160 "$PY" bench/gpu_gptq_shapes.py --samples 16 --seq-len 2048 --build-device cuda \
  --json "$out/gptq-8b-shape.json"
part lowbit-8b-layers 420 "$PY" bench/gpu_layers.py --shape 8b --depths 1 --samples 16 --seq-len 2048 \
  --methods gptq-2bit,billm-1.1bit,autoround-2bit --json "$out/lowbit-8b-layers.json"
part dbllm-8b-layers 300 "$PY" bench/gpu_layers.py --shape 8b --depths 1,2 --samples 16 --seq-len 2048 \
  --methods db-llm-2bit --db-llm-steps 20 --json "$out/dbllm-8b-layers.json"

echo "== summary ($out)"
cat "$summary"
