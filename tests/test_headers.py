"""Every header in csrc/ compiles on its own: included first, alone, in a
translation unit with nothing before it but what its layer's compiler
provides (the CUDA headers get tests/cuda_emu/cuda_emu.h, the emulated
counterpart of what nvcc provides implicitly; the torch binding's headers
get torch's include folders; the direct call's get Python's). The torch-free
CPU and core headers also compile for aarch64 (with the cross compiler,
where installed): x86's own code lives in csrc/cpu/x86/, included only
under BIASFIT_X86."""
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
EMU = ROOT / "tests" / "cuda_emu"
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")

HEADERS = sorted(p.relative_to(CSRC).as_posix()
                 for p in CSRC.rglob("*") if p.suffix in (".h", ".cuh"))


def torch_includes():
    from torch.utils import cpp_extension
    return cpp_extension.include_paths()


def flags_for(header: str) -> list:
    layer = header.split("/")[0]
    if layer == "cuda":
        return [f"-I{EMU}", "-include", "cuda_emu.h"]
    if layer == "torch_ops":
        return [f"-I{p}" for p in torch_includes()] + [
            f"-I{sysconfig.get_paths()['include']}"]
    if layer == "direct":
        return [f"-I{sysconfig.get_paths()['include']}"]
    return []


def test_the_layers_are_folders():
    assert {h.split("/")[0] for h in HEADERS} == {"core", "cpu", "cuda", "torch_ops", "direct"}
    assert not [p.name for p in CSRC.iterdir() if p.is_file()], "csrc/ holds folders only"


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
@pytest.mark.parametrize("header", HEADERS)
def test_header_compiles_on_its_own(header, tmp_path):
    source = tmp_path / "alone.cpp"
    source.write_text(f'#include "{header}"\n')
    command = [CXX, "-std=c++20", "-fsyntax-only", "-Wall", "-Wno-psabi",
               "-Wno-unknown-pragmas", f"-I{CSRC}", *flags_for(header), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{header} does not compile on its own:\n{done.stderr[-3000:]}"


def test_core_headers_use_no_torch():
    # core/ is the host+device math: what the CPU and CUDA kernels share.
    for header in (h for h in HEADERS if h.startswith(("core/", "cpu/", "cuda/"))):
        text = (CSRC / header).read_text()
        assert "#include <torch" not in text and "#include <ATen" not in text, header


# The torch-free headers every CPU builds; csrc/cpu/x86/ is x86's alone.
PORTABLE = [h for h in HEADERS if h.startswith(("core/", "cpu/")) and not h.startswith("cpu/x86/")]
CROSS_CXX = shutil.which("aarch64-linux-gnu-g++")


@pytest.mark.skipif(CROSS_CXX is None and os.environ.get("BIASFIT_REQUIRE_AARCH64") != "1",
                    reason="no aarch64 cross compiler (Debian: g++-aarch64-linux-gnu)")
@pytest.mark.parametrize("header", PORTABLE)
@pytest.mark.parametrize("openmp", [True, False], ids=["openmp", "no-openmp"])
def test_header_compiles_for_aarch64(header, openmp, tmp_path):
    assert CROSS_CXX is not None, "BIASFIT_REQUIRE_AARCH64=1 but no aarch64-linux-gnu-g++"
    source = tmp_path / "alone.cpp"
    source.write_text(f'#include "{header}"\n')
    command = [CROSS_CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wno-unknown-pragmas",
               *(["-fopenmp"] if openmp else []), f"-I{CSRC}", str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{header} does not compile for aarch64:\n{done.stderr[-3000:]}"


X86_ONLY = re.compile(r"immintrin|__builtin_ia32_|__builtin_cpu_supports|__m(128|256|512)|"
                      r"_mm(256|512)?_|BIASFIT_AVX|x86::")


def test_x86_code_only_under_the_guard():
    # Outside csrc/cpu/x86/, x86's intrinsics, types and target attributes
    # appear only between #if BIASFIT_X86 (or BIASFIT_X86_HAND_LOOPS) and its
    # #endif (comments aside).
    for header in PORTABLE:
        depth, guarded = 0, []  # guarded: the depths where BIASFIT_X86 opened
        for number, line in enumerate((CSRC / header).read_text().splitlines(), 1):
            code = line.split("//")[0].strip()
            if code.startswith("#if"):
                depth += 1
                if code.split()[1:] in (["BIASFIT_X86"], ["BIASFIT_X86_HAND_LOOPS"]):
                    guarded.append(depth)
            elif code.startswith(("#else", "#elif")):
                if guarded and guarded[-1] == depth:
                    guarded.pop()  # the other CPUs' branch
            elif code.startswith("#endif"):
                if guarded and guarded[-1] == depth:
                    guarded.pop()
                depth -= 1
            elif X86_ONLY.search(code) and not guarded and "define BIASFIT_X86" not in code:
                pytest.fail(f"{header}:{number} has x86-only code outside #if BIASFIT_X86: {line}")
