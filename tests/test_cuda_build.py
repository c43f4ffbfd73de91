"""The CUDA build without a GPU: setup.py's CUDA settings, and csrc/cuda.cu
compiling with nvcc wherever nvcc exists (tools/check_cuda_compile.py)."""
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import check_cuda_compile  # noqa: E402

setup = check_cuda_compile.load_setup()


def test_default_archs_are_sm80_sm90_and_ptx_for_newer(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", setup.cuda_arch_list())
    assert sorted(cpp_extension._get_cuda_arch_flags()) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=compute_90",  # PTX, JIT-compiled on newer GPUs
        "-gencode=arch=compute_90,code=sm_90",
    ]


@pytest.mark.parametrize("value, expected", [
    ("8.6", "8.6"), ("9.0;10.0+PTX", "9.0;10.0+PTX"), ("", setup.CUDA_ARCHS)])
def test_arch_list_is_overridable(monkeypatch, value, expected):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", value)
    assert setup.cuda_arch_list() == expected


def test_nvcc_flags_keep_per_point_rounding():
    flags = setup.nvcc_flags(["-O3"])
    assert "--fmad=false" in flags and "-O3" in flags
    # An 'arch' flag here would make cpp_extension drop TORCH_CUDA_ARCH_LIST.
    assert not any("arch" in f for f in flags)


@pytest.mark.skipif(check_cuda_compile.find_nvcc() is None, reason="no nvcc on this machine")
def test_cuda_sources_compile_without_warnings():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "check_cuda_compile.py")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
