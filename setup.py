"""Setuptools entry point (metadata: pyproject.toml) and the C++/CUDA extension in csrc/.

The extension `timemar_engine._C` is built with torch's extension tools, so torch must be
importable while pip builds: install with `pip install --no-build-isolation .` after torch (the
README's commands do). Without torch at build time (pip's default isolated build), without a C++
compiler, or with TIMEMAR_BUILD_EXTENSION=0, the package installs without it and runs on the
pure-PyTorch path, saying so once at run time.

- CPU ops (csrc/ops.cpp, csrc/cpu/*.cpp): always, when built.
- CUDA ops: when nvcc is found (CUDA_HOME, else PATH) and TIMEMAR_BUILD_CUDA is not 0. The kernels
  in csrc/cuda/kernels.cu include only the CUDA runtime, so nvcc compiles them against any torch
  (the CPU wheel too); they are linked with the static cudart and registered for CUDA tensors by
  csrc/cuda/ops_cuda.cpp. TIMEMAR_CUDA_ARCH (default "80;90") picks the GPU architectures.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = "csrc"


def say(msg: str) -> None:
    print(f"timemar-engine setup: {msg}", file=sys.stderr)


def find_nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    cand = Path(home, "bin", "nvcc") if home else None
    if cand and cand.exists():
        return str(cand)
    return shutil.which("nvcc")


def cudart_dir(nvcc: str) -> Path | None:
    """The folder holding libcudart_static.a: CUDA_HOME's, nvcc's toolkit's, or /usr/local/cuda's
    (nvcc may be a wrapper script outside the toolkit)."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             Path(nvcc).resolve().parent.parent, "/usr/local/cuda"]
    for home in filter(None, homes):
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
            if (Path(home) / sub / "libcudart_static.a").exists():
                return Path(home) / sub
    return None


def cpu_flags() -> list[str]:
    """-O3 without debug info or FMA contraction (the decode epilogue reproduces numpy's rounding
    exactly), OpenMP (at::parallel_for is inline: without -fopenmp it runs serially; the module
    then shares torch's own libgomp.so.1, already loaded under that name), plus
    AVX2/FMA code when this machine has them (the extension is built on the machine that runs it;
    TIMEMAR_PORTABLE_BUILD=1 leaves them out)."""
    flags = ["-O3", "-g0", "-ffp-contract=off", "-fopenmp"]
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    if os.environ.get("TIMEMAR_PORTABLE_BUILD") != "1" and " avx2 " in cpuinfo and " fma " in cpuinfo:
        flags += ["-mavx2", "-mfma"]
    return flags


def extension_setup() -> dict:
    if os.environ.get("TIMEMAR_BUILD_EXTENSION", "1") == "0":
        say("TIMEMAR_BUILD_EXTENSION=0: the C++ extension is not built")
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        say("torch is not importable in this build environment, so the C++ extension is not "
            "built; install torch first, then pip install --no-build-isolation .")
        return {}
    sources = [f"{CSRC}/ops.cpp", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / CSRC / "cpu")
                                          .glob("*.cpp"))]
    macros, objects, libs, lib_dirs = [], [], [], []
    nvcc = find_nvcc() if os.environ.get("TIMEMAR_BUILD_CUDA", "1") != "0" else None
    cuda_lib = cudart_dir(nvcc) if nvcc else None
    if nvcc and not cuda_lib:
        say(f"nvcc at {nvcc} but no libcudart_static.a found (set CUDA_HOME): CPU ops only")
    elif nvcc:
        obj = ROOT / "build" / "timemar_cuda_kernels.o"
        obj.parent.mkdir(exist_ok=True)
        archs = os.environ.get("TIMEMAR_CUDA_ARCH", "80;90").split(";")
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
        cmd = [nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", *gencode, "-c",
               str(ROOT / CSRC / "cuda" / "kernels.cu"), "-o", str(obj)]
        say(f"compiling the CUDA kernels: {' '.join(cmd)}")
        if subprocess.run(cmd).returncode == 0:
            sources.append(f"{CSRC}/cuda/ops_cuda.cpp")
            macros.append(("WITH_CUDA", None))
            objects.append(str(obj))
            libs += ["cudart_static", "rt", "dl", "pthread"]
            lib_dirs.append(str(cuda_lib))
        else:
            say("nvcc failed: building the CPU ops only")
    else:
        say("nvcc not found (or TIMEMAR_BUILD_CUDA=0): building the CPU ops only")
    ext = CppExtension("timemar_engine._C", sources, include_dirs=[str(ROOT / CSRC)],
                       define_macros=macros, extra_objects=objects, libraries=libs,
                       library_dirs=lib_dirs, extra_compile_args={"cxx": cpu_flags()},
                       extra_link_args=["-fopenmp"],
                       optional=True)  # a failed build leaves the pure-PyTorch package
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**extension_setup())
