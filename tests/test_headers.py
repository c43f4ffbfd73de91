"""Every header in csrc/ compiles on its own: included first, alone, in a
translation unit with nothing before it but what its layer's compiler
provides (the CUDA headers get tests/cuda_emu/cuda_emu.h, the emulated
counterpart of what nvcc provides implicitly; the torch binding's headers
get torch's include folders; the direct call's get Python's)."""
import os
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
