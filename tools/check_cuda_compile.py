"""Compiles csrc/torch_ops/cuda_ops.cu with nvcc as setup.py's CUDA build would, anywhere.

Where nvcc exists but torch is a CPU build (no GPU, as on our CI machine),
setup.py rightly refuses BIASFIT_CUDA=1, so nothing would notice CUDA sources
that no longer compile. This compiles them to an object file with the flags
torch's cpp_extension and setup.py pass (include paths, defines, common nvcc
flags, the TORCH_CUDA_ARCH_LIST architectures, setup.nvcc_flags), plus host
warnings. Nothing is linked or run.

    python tools/check_cuda_compile.py [-o cuda.o] [--print-command]

Exit status: 0 compiled with no warning; 1 failed or warned;
2 no nvcc found.
"""
import argparse
import importlib.util
import inspect
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent


def load_setup():
    """setup.py as a module; its setup() call only runs as __main__."""
    spec = importlib.util.spec_from_file_location("biasfit_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_nvcc():
    """The toolkit's real nvcc, found as setup.py finds the toolkit."""
    home = load_setup().cuda_toolkit.candidate_home()
    nvcc = home / "bin" / "nvcc" if home is not None else None
    return str(nvcc) if nvcc is not None and nvcc.is_file() else None


def cpp_standard():
    # cpp_extension appends its default -std when the flags carry none (C++20
    # since torch 2.10, C++17 before); read it rather than guess.
    source = inspect.getsource(cpp_extension)
    return "-std=c++20" if "'c++20'" in source else "-std=c++17"


def nvcc_command(nvcc, out):
    setup = load_setup()
    torch_include = Path(cpp_extension.include_paths()[0])
    # -isystem rather than the build's -I: the same headers, but warnings are
    # reported for our sources only.
    system_includes = cpp_extension.include_paths() + [
        str(Path(nvcc).parent.parent / "include"),
        sysconfig.get_paths()["include"],
    ]
    defines = [
        "TORCH_API_INCLUDE_EXTENSION_H",
        "TORCH_EXTENSION_NAME=_C",
        f"_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "BIASFIT_WITH_CUDA",
        # As setup.py: torch's stable ABI only, for the floor release.
        setup.torch_target_macro().removeprefix("-D"),
        'BIASFIT_TORCH_TARGET="{}.{}"'.format(*setup.TORCH_FLOOR),
    ]
    # A CPU wheel ships c10/cuda's headers but not this CMake-generated one,
    # whose only content (C10_CUDA_BUILD_SHARED_LIBS) matters on Windows.
    if not (torch_include / "c10/cuda/impl/cuda_cmake_macros.h").is_file():
        defines.append("C10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    os.environ["TORCH_CUDA_ARCH_LIST"] = setup.cuda_arch_list()
    flags = setup.nvcc_flags(["-O3"])
    return ([nvcc, "-c", str(ROOT / "csrc" / "torch_ops" / "cuda_ops.cu"), "-o", str(out),
             f"-I{ROOT / 'csrc'}"]
            + [f"-isystem={p}" for p in system_includes]
            + [f"-D{d}" for d in defines]
            + cpp_extension.COMMON_NVCC_FLAGS + ["--compiler-options", "-fPIC"]
            + flags + cpp_extension._get_cuda_arch_flags(flags) + [cpp_standard()]
            # Checks only: host warnings, and one nvcc thread per architecture.
            + ["-Xcompiler=-Wall,-Wextra", "--threads", "0"])


def our_warnings(output):
    return [line for line in output.splitlines() if "warning" in line.lower()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", help="object file (default: a temporary one)")
    parser.add_argument("--print-command", action="store_true")
    args = parser.parse_args(argv)
    nvcc = find_nvcc()
    if nvcc is None:
        print("check_cuda_compile: no nvcc found (set CUDA_HOME)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output) if args.output else Path(tmp) / "cuda.o"
        command = nvcc_command(nvcc, out)
        if args.print_command:
            print(" ".join(command))
        done = subprocess.run(command, capture_output=True, text=True)
        output = done.stdout + done.stderr
        print(output, end="")
        if done.returncode != 0:
            print(f"check_cuda_compile: nvcc failed ({done.returncode})", file=sys.stderr)
            return 1
        warned = our_warnings(output)
        if warned:
            print(f"check_cuda_compile: {len(warned)} warning(s)", file=sys.stderr)
            return 1
        print(f"check_cuda_compile: csrc/torch_ops/cuda_ops.cu compiled for "
              f"{os.environ['TORCH_CUDA_ARCH_LIST']} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
