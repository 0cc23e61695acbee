#!/usr/bin/env bash
# The one prepared GPU check (run on the lent H100/H200 through the device tool, no network;
# the image has Python 3.12, torch 2.11+cu130, triton 3.6). Within about 8 minutes it:
#   1. installs the package (no deps, no build isolation: the image's torch is used),
#   2. runs the GPU tests: tests/test_cuda.py and the Triton kernel tests compiled for real,
#   3. runs the benchmarks (kernels vs their eager twins, engine vs eager end to end, 100k `s`),
#   4. samples 100,000 windows of the default model with the CLI (auto backend),
# and prints one summary table. Results go to $OUT (default /tmp/gpu_check).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_check}"; mkdir -p "$OUT"
unset TRITON_INTERPRET
python3 - <<'PY'
import torch, triton
print("torch", torch.__version__, "| triton", triton.__version__, "| device", torch.cuda.get_device_name(0))
PY
# 1. install; if pip cannot (no network, no setuptools), lay the package out by hand
if ! pip install -q --no-deps --no-build-isolation --no-index . >"$OUT/pip.log" 2>&1; then
    echo "pip install failed (see $OUT/pip.log); using a copied package tree"
    PKG="$(mktemp -d)"; cp -r timemar_engine "$PKG/"; cp -r kernels "$PKG/timemar_engine/kernels"
    export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
fi
(cd /tmp && python3 -c "import timemar_engine.kernels.attention, timemar_engine.kernels.codebook; print('package ok:', __import__('timemar_engine').__file__)")
# the C++/CUDA extension: built by the pip install above; in the copied tree, JIT-built in place
(cd /tmp && python3 -c "import timemar_engine._C") 2>/dev/null || python3 - <<'PY'
import glob, importlib.util, os
from torch.utils import cpp_extension
pkg = os.path.dirname(importlib.util.find_spec("timemar_engine").origin)
src = ["csrc/ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp")), "csrc/cuda/ops_cuda.cpp",
       "csrc/cuda/kernels.cu"]
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0"); os.environ.setdefault("MAX_JOBS", "16")
cpp_extension.load("_C", src, extra_cflags=["-O3", "-ffp-contract=off", "-DWITH_CUDA"],
                   extra_include_paths=["csrc"], build_directory=pkg, verbose=False)
print("extension JIT-built into", pkg)
PY
(cd /tmp && python3 -c "from timemar_engine import extension as e; print('extension:', e.status())")
# python3 -P: the repo's own timemar_engine/ (which lacks kernels/) must not shadow the install
# 2. GPU tests (the kernels compiled for real: TRITON_INTERPRET is unset)
python3 -P -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_kernel_attention.py \
    tests/test_kernel_codebook.py tests/test_fast_sampling.py tests/test_extension.py 2>&1 | tail -n 8
# 3. benchmarks, medians into one JSON
python3 -P -m pytest -q -p no:cacheprovider bench/ --benchmark-only \
    --benchmark-json "$OUT/bench.json" 2>&1 | tail -n 4
# 4. the main job: 100k windows from the default model, auto backend
TIMEFORMAT="%R s wall (sample --n 100000, default model, auto backend)"
time timemar-engine sample --n 100000 --out /tmp/s100k.npy --seed 0 --force --quiet 2>&1 \
    || time python3 -P -m timemar_engine.cli sample --n 100000 --out /tmp/s100k.npy --seed 0 --force --quiet
python3 bench/summary.py "$OUT/bench.json"
