"""Builds biasfit._C with torch.utils.cpp_extension against the installed torch.

Environment overrides:
  BIASFIT_CUDA=0|1     force a CPU-only build, or insist on the CUDA sources
                       (default: build them when nvcc and a CUDA torch exist)
  TORCH_CUDA_ARCH_LIST the GPU architectures (default: sm_80, sm_90, plus PTX
                       of the newest so later GPUs can JIT it)
  BIASFIT_DEBUG=1      -O0 -g instead of -O3
"""
import os
from pathlib import Path

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"
# Default TORCH_CUDA_ARCH_LIST: SASS for sm_80 and sm_90, and sm_90's PTX,
# which the driver JIT-compiles for newer GPUs.
CUDA_ARCHS = "8.0;9.0+PTX"


def cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST if set and not empty, else CUDA_ARCHS."""
    return os.environ.get("TORCH_CUDA_ARCH_LIST") or CUDA_ARCHS


def nvcc_flags(opt):
    """nvcc's flags on top of torch's; tools/check_cuda_compile.py uses them.

    No -std: torch's cpp_extension adds the standard its headers need.
    No FMA contraction: each point must round as eager PyTorch's separate
    multiply and add do (see csrc/network.h).
    """
    return opt + ["--fmad=false"]


def want_cuda() -> bool:
    forced = os.environ.get("BIASFIT_CUDA")
    have = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if forced is None:
        return have
    if forced == "1" and not have:
        raise RuntimeError(
            "BIASFIT_CUDA=1 but no CUDA build can be made here: torch "
            f"{torch.__version__} (CUDA {torch.version.cuda}), CUDA_HOME="
            f"{cpp_extension.CUDA_HOME}")
    return forced == "1"


def write_build_info(with_cuda: bool) -> None:
    # Read by biasfit/_native.py to refuse an extension built for another torch.
    (ROOT / "biasfit" / "_build_info.py").write_text(
        "# Written by setup.py at build time.\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"WITH_CUDA = {with_cuda!r}\n")


def extension():
    with_cuda = want_cuda()
    write_build_info(with_cuda)
    debug = os.environ.get("BIASFIT_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # No FMA contraction: each point must round as eager PyTorch's separate
    # multiply and add do (see csrc/network.h).
    cxx = opt + ["-fopenmp", "-ffp-contract=off", "-fno-trapping-math"]
    sources = ["csrc/ops.cpp", "csrc/cpu.cpp", "csrc/python.cpp"]
    macros = []
    kwargs = {}
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
        sources.append("csrc/cuda.cu")
        macros.append(("BIASFIT_WITH_CUDA", None))
        kwargs["extra_compile_args"] = {"cxx": cxx, "nvcc": nvcc_flags(opt)}
        ext_type = cpp_extension.CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext_type = cpp_extension.CppExtension
    return ext_type(
        "biasfit._C", sources, define_macros=macros,
        extra_link_args=["-fopenmp"], **kwargs)


# Guarded so that tools/check_cuda_compile.py can import the flags above;
# pip's build backend runs this file as __main__.
if __name__ == "__main__":
    setup(
        ext_modules=[extension()],
        cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    )
