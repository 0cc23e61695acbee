#!/usr/bin/env bash
# The one prepared GPU check (run on the lent H100/H200 through the device tool):
# GPU tests, the benchmarks, CUDA sampling of the default model, and the metrics on CUDA.
# Prints a short table at the end. Needs torch with CUDA, pandas, scipy, tqdm, sklearn, pytest.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-/tmp/gpu_check}"; mkdir -p "$OUT"
cli() { python3 -m timemar_engine.cli "$@"; }
python3 - <<'PY'
import torch
print("torch", torch.__version__, "| device", torch.cuda.get_device_name(0))
PY
# 1. tests that exercise CUDA (plus the CPU suite's model tests as a sanity check)
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_model.py 2>&1 | tail -n 5
# 2. benchmarks (eager sampling, medians)
python3 -m pytest -q -p no:cacheprovider bench/ --benchmark-only \
    --benchmark-json "$OUT/bench.json" 2>&1 | tail -n 3
# 3. the main job on CUDA: 100k windows from the default model
TIMEFORMAT="%R s wall"
time cli sample --n 100000 --out /tmp/s100k.npy --device cuda --seed 0 --force
# 4. (GPU_CHECK_METRICS=1) the four metrics on CUDA at full protocol settings
if [ "${GPU_CHECK_METRICS:-0}" = 1 ]; then
cli sample --n 17397 --out /tmp/a.npy --device cuda --seed 1 --force --quiet
cli sample --n 17397 --out /tmp/b.npy --device cuda --seed 2 --force --quiet
time cli evaluate --real /tmp/a.npy --fake /tmp/b.npy --device cuda --repeats 5 --quiet \
    --json "$OUT/eval_cuda.json"
fi
python3 - "$OUT/bench.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print(f"{'benchmark':<40}{'median ms':>12}{'windows/s':>14}")
for r in b["benchmarks"]:
    print(f"{r['name']:<40}{r['stats']['median'] * 1e3:>12.2f}"
          f"{r['extra_info'].get('windows_per_s', 0):>14,.0f}")
PY
