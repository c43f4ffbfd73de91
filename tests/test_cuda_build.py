"""The CUDA build without a GPU: setup.py's CUDA settings, csrc/torch_ops/cuda_ops.cu
compiling with nvcc wherever nvcc exists (tools/check_cuda_compile.py), and
every kernel's PTX free of anything the GPU could fuse into an FMA."""
import os
import re
import shutil
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


# -- finding the toolkit (build_backend/cuda_toolkit.py) -------------------------

toolkit = setup.cuda_toolkit
HOME = toolkit.candidate_home() if check_cuda_compile.find_nvcc() else None
needs_nvcc = pytest.mark.skipif(HOME is None, reason="no nvcc on this machine")


def test_a_cpu_torch_builds_without_cuda_and_says_why():
    found = toolkit.find("2.13.0+cpu", None)
    assert found.home is None and found.reason == "torch 2.13.0+cpu is a CPU build"


@needs_nvcc
def test_an_nvcc_wrapper_on_path_leads_to_the_real_toolkit(monkeypatch, tmp_path):
    # /usr/local/bin/nvcc here is a script running /usr/local/cuda-13.0/bin/nvcc;
    # torch's own guess (nvcc's folder's parent) would be /usr/local.
    real = HOME / "bin" / "nvcc"
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:/usr/bin:/bin")
    assert toolkit.candidate_home().resolve() == HOME.resolve()


@needs_nvcc
def test_toolkit_and_torch_cuda_major_versions_must_match(monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(HOME))
    version = toolkit._toolkit_version(HOME)
    major = int(version.split(".")[0])
    found = toolkit.find("2.14.1+cu", f"{major}.0")
    assert found.home == HOME, found.reason
    other = toolkit.find("2.14.1+cu", f"{major - 1}.8")
    assert other.home is None
    assert f"is CUDA {version} but torch 2.14.1+cu was built with CUDA {major - 1}.8" in other.reason


def test_biasfit_cuda_1_fails_early_with_the_reason_and_writes_nothing(tmp_path):
    # A copy of the sources: the build must leave it exactly as it was.
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("csrc", "biasfit", "build_backend"):
        shutil.copytree(ROOT / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    env = dict(os.environ, BIASFIT_CUDA="1", CUDA_HOME=str(tmp_path / "no-toolkit"))
    done = subprocess.run([sys.executable, "setup.py", "bdist_wheel"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("biasfit: BIASFIT_CUDA=1 but no CUDA build can be made: ")
    assert "CPU build" in last or "no CUDA toolkit" in last
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# -- the kernels' math is free of FMA contraction, whatever the flags ------------------

# CUDA's own pow (core/adam.h's beta^step) is the one function allowed plain
# operations and fused multiply-adds: its accuracy is CUDA's business. Its
# special cases, inlined into the kernels, leave plain adds (x + y for NaN)
# there; an add with no plain multiply beside it has nothing to fuse with.
CUDA_POW = "__internal_accurate_pow"
PLAIN_MUL = re.compile(r"^\s*mul(\.ftz)?\.f(32|64)\s")  # no .rn: ptxas may fuse it
FMA = re.compile(r"^\s*(fma|mad)(\.[a-z]+)*\.f(32|64)\s")  # NVVM fused it


def contractible(ptx):
    """(function, instruction) of every multiply that a --fmad=true build
    could fuse into an FMA, and every FMA already there, outside CUDA's pow."""
    found, function = [], None
    for line in ptx.splitlines():
        entry = re.search(r"\.(?:entry|func)\s+(?:\([^)]*\)\s*)?([\w$]+)", line)
        if entry:
            function = entry.group(1)
        elif function != CUDA_POW and (PLAIN_MUL.match(line) or FMA.match(line)):
            found.append((function, line.strip()))
    return found


def probe_ptx(tmp_path, source, csrc=ROOT / "csrc"):
    nvcc = check_cuda_compile.find_nvcc()
    out = tmp_path / "probe.ptx"
    done = subprocess.run([nvcc, "-std=c++20", "--ptx", "-arch=sm_90", "--fmad=true",
                           f"-I{csrc}", str(source), "-o", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out.read_text()


@pytest.mark.skipif(check_cuda_compile.find_nvcc() is None, reason="no nvcc on this machine")
def test_kernel_math_has_nothing_to_fuse_even_with_fmad_true(tmp_path):
    # tests/cuda_emu/fma_probe.cu instantiates every kernel (fused_loss,
    # fit_sgd, every gradient, fit_params, fit_many) for both dtypes: with contraction
    # allowed, every multiply must still be a round-to-nearest one (core/rounding.h)
    # and no FMA may appear, so each point rounds as on the CPU.
    ptx = probe_ptx(tmp_path, ROOT / "tests" / "cuda_emu" / "fma_probe.cu")
    assert "fit_params_one_block_kernel" in ptx and "ParamSumsSink" in ptx
    assert "many_team_kernel" in ptx and "many_thread_kernel" in ptx
    assert contractible(ptx) == []
    # The check bites: core/sgd.h's step written as plain operators is caught.
    mutant = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", mutant)
    sgd = (mutant / "core/sgd.h").read_text()
    step = "return add_rn(param, mul_rn(T(-o.lr), grad));"
    assert step in sgd
    (mutant / "core/sgd.h").write_text(sgd.replace(step, "return param + T(-o.lr) * grad;"))
    assert contractible(probe_ptx(tmp_path, ROOT / "tests" / "cuda_emu" / "fma_probe.cu",
                                  csrc=mutant)) != []
