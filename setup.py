"""Builds biasfit's two extension modules with torch.utils.cpp_extension.

  biasfit._C       the ops (torch.ops.biasfit), on PyTorch's stable ABI
                   (TORCH_TARGET_VERSION = TORCH_FLOOR of biasfit/_version.py)
                   and Python's limited API: one binary serves every torch
                   from the floor up.
  biasfit._direct  fit_fused's direct call into the CPU trainer (pybind11,
                   no torch types, so it is tied to the CPython only).

Nothing is written into the source tree except by an editable install: the
build folder is a temporary one (or BIASFIT_BUILD_DIR, kept, for fast
rebuilds).

Environment overrides:
  BIASFIT_CUDA=0|1     force a CPU-only build, or insist on the CUDA kernels
                       (default: build them when build_backend/cuda_toolkit.py
                       finds a CUDA torch and a toolkit of its major version)
  CUDA_HOME            the CUDA toolkit to use
  TORCH_CUDA_ARCH_LIST the GPU architectures (default: sm_80, sm_90, plus PTX
                       of the newest so later GPUs can JIT it)
  BIASFIT_OPENMP=0|1   build without OpenMP (threads on std::thread, the
                       same bits), or insist on it (default: with it when
                       the C++ compiler accepts -fopenmp, which a test
                       compile decides; Apple's clang does not)
  BIASFIT_DEBUG=1      -O0 -g instead of -O3
  BIASFIT_BUILD_DIR    where build files go (default: a temporary folder)
"""
import atexit
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(ROOT / "build_backend"))
import cuda_toolkit  # noqa: E402

# Default TORCH_CUDA_ARCH_LIST: SASS for sm_80 and sm_90, and sm_90's PTX,
# which the driver JIT-compiles for newer GPUs.
CUDA_ARCHS = "8.0;9.0+PTX"
# Every #include of ours names its path from here.
CSRC = str(ROOT / "csrc")


def sources_in(folder: str, suffix: str) -> list:
    """The sources of one layer of csrc/ (the headers beside them are
    included by path from csrc/: #include "core/network.h")."""
    return sorted(f"csrc/{folder}/{p.name}" for p in (ROOT / "csrc" / folder).glob("*" + suffix))


def version_info():
    text = (ROOT / "biasfit" / "_version.py").read_text()
    version = re.search(r'^__version__ = "(.+)"', text, re.M).group(1)
    floor = re.search(r'^TORCH_FLOOR = "(\d+)\.(\d+)"', text, re.M)
    return version, (int(floor.group(1)), int(floor.group(2)))


VERSION, TORCH_FLOOR = version_info()


def torch_target_macro() -> str:
    """TORCH_TARGET_VERSION for the floor: major and minor in the top bytes."""
    major, minor = TORCH_FLOOR
    return f"-DTORCH_TARGET_VERSION=0x{major:02x}{minor:02x}000000000000"


def cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST if set and not empty, else CUDA_ARCHS."""
    return os.environ.get("TORCH_CUDA_ARCH_LIST") or CUDA_ARCHS


def nvcc_flags(opt):
    """nvcc's flags on top of torch's; tools/check_cuda_compile.py uses them.

    No -std: torch's cpp_extension adds the standard its headers need.
    No FMA contraction: each point must round as eager PyTorch's separate
    multiply and add do (see csrc/core/network.h).
    """
    return opt + ["--fmad=false"]


def cuda_toolkit_to_use(torch):
    """The toolkit's folder for a CUDA build, or None for a CPU-only one."""
    forced = os.environ.get("BIASFIT_CUDA")
    if forced == "0":
        return None
    found = cuda_toolkit.find(torch.__version__, torch.version.cuda)
    if found.home is None:
        if forced == "1":
            raise SystemExit(f"biasfit: BIASFIT_CUDA=1 but no CUDA build can be made: "
                             f"{found.reason}")
        print(f"biasfit: building without CUDA: {found.reason} "
              f"({cuda_toolkit.HOW_TO_FORCE})", file=sys.stderr)
    return found.home


def cxx_compiler() -> list:
    """The C++ compiler torch's BuildExtension runs: $CXX, else c++."""
    return shlex.split(os.environ.get("CXX") or "c++")


def compiles(flags: list, source: str, link: bool) -> bool:
    """Whether the C++ compiler builds `source` with `flags` (a test compile)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "probe.cpp")
        with open(path, "w") as f:
            f.write(source)
        command = cxx_compiler() + flags + [path, "-o", os.path.join(folder, "probe")]
        if not link:
            command.insert(-2, "-c")
        try:
            done = subprocess.run(command, capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0


OPENMP_PROBE = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
SIMD_PROBE = "int f(float* a) {\n#pragma omp simd\n for (int i = 0; i < 8; ++i) a[i] += 1;\n return 0; }\n"


def openmp_flags() -> tuple:
    """(compile flags, link flags) for the CPU code's threads.

    With OpenMP: -fopenmp. Without (BIASFIT_OPENMP=0, or a compiler that
    refuses it): csrc/cpu/parallel.h runs the threads on std::thread, and
    -fopenmp-simd, where accepted, keeps the `omp simd` loops vectorized
    without OpenMP's runtime. The same bits either way.
    """
    forced = os.environ.get("BIASFIT_OPENMP")
    if forced != "0":
        if compiles(["-fopenmp"], OPENMP_PROBE, link=True):
            return ["-fopenmp"], ["-fopenmp"]
        if forced == "1":
            raise SystemExit(f"biasfit: BIASFIT_OPENMP=1 but {cxx_compiler()[0]} "
                             "cannot build with -fopenmp")
        print(f"biasfit: building without OpenMP: {cxx_compiler()[0]} does not accept "
              "-fopenmp; threads run on std::thread (BIASFIT_OPENMP=1 to insist)",
              file=sys.stderr)
    else:
        print("biasfit: building without OpenMP (BIASFIT_OPENMP=0); threads run on "
              "std::thread", file=sys.stderr)
    simd = ["-fopenmp-simd"] if compiles(["-fopenmp-simd"], SIMD_PROBE, link=False) else []
    return simd + ["-pthread"], ["-pthread"]


def cxx_flags(opt: list, openmp: list) -> list:
    """The C++ flags of every source (tests/test_native_portable.py builds
    the torch-free core with them too).

    No FMA contraction: each point must round as eager PyTorch's separate
    multiply and add do (see csrc/core/network.h).
    """
    return opt + openmp + ["-ffp-contract=off", "-fno-trapping-math"]


def extensions():
    import torch

    cuda_home = cuda_toolkit_to_use(torch)  # first: BIASFIT_CUDA=1 fails early
    import pybind11
    if cuda_home is not None:
        # cpp_extension reads CUDA_HOME when imported, and links from it.
        os.environ["CUDA_HOME"] = str(cuda_home)
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
    from torch.utils import cpp_extension
    if cuda_home is not None:
        cpp_extension.CUDA_HOME = str(cuda_home)

    debug = os.environ.get("BIASFIT_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    openmp, link = openmp_flags()
    cxx = cxx_flags(opt, openmp)
    stable = [torch_target_macro(),
              '-DBIASFIT_TORCH_TARGET="{}.{}"'.format(*TORCH_FLOOR)]
    sources = sources_in("torch_ops", ".cpp")
    kwargs = {"extra_compile_args": {"cxx": cxx + stable}, "include_dirs": [CSRC]}
    make = cpp_extension.CppExtension
    if cuda_home is not None:
        sources += sources_in("torch_ops", ".cu")
        kwargs["define_macros"] = [("BIASFIT_WITH_CUDA", None)]
        kwargs["extra_compile_args"]["nvcc"] = nvcc_flags(opt) + stable
        make = cpp_extension.CUDAExtension
    ops = make("biasfit._C", sources, py_limited_api=True,
               extra_link_args=link, **kwargs)
    direct = Extension(
        "biasfit._direct", sources_in("direct", ".cpp"), language="c++",
        include_dirs=[CSRC, pybind11.get_include()],
        extra_compile_args=cxx + ["-fvisibility=hidden"],
        extra_link_args=link)
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ops, direct], {"build_ext": build_ext}


def build_folder() -> str:
    """BIASFIT_BUILD_DIR, or a temporary folder removed when the build ends."""
    if os.environ.get("BIASFIT_BUILD_DIR"):
        return os.environ["BIASFIT_BUILD_DIR"]
    folder = tempfile.mkdtemp(prefix="biasfit-build-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def torch_requirement() -> str:
    return "torch>={}.{}".format(*TORCH_FLOOR)


# Commands that only write metadata or the sdist need no torch; every build
# does (bdist_wheel runs egg_info itself, after its own name on the line).
METADATA_ONLY = {"sdist", "egg_info", "dist_info"}

if __name__ == "__main__":
    metadata_only = bool(METADATA_ONLY & set(sys.argv[1:2]))
    ext_modules, cmdclass = ([], {}) if metadata_only else extensions()
    folder = build_folder()
    setup(
        version=VERSION,
        install_requires=[torch_requirement(), "tqdm>=4.60", "numpy>=1.23", "pyarrow>=14"],
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        options={"build": {"build_base": os.path.join(folder, "build")},
                 "egg_info": {"egg_base": folder}},
    )
