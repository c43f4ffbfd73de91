"""The torch-free CPU core gives the same bits on every build: x86-64 and
aarch64, with OpenMP and without, g++ and clang, every x86 instruction set.

tests/native/core_fits.cpp runs the CPU trainers (the tutorial fit; fits
forcing each plan, in float32 and float64; the seven-parameter trainer with
SGD, Adam and AdamW) on data from an integer LCG, each on 1, 2 and 3
threads, and prints every result as hex floats and loss bits. It is built
with setup.py's own C++ flags (cxx_flags: no FMA contraction), with and
without OpenMP as setup.py would (-fopenmp, or -fopenmp-simd and
std::thread); for aarch64 with aarch64-linux-gnu-g++ -static, run under
qemu-aarch64. Every output must equal the native OpenMP build's.

The aarch64 cases skip where the cross compiler or qemu is missing (Debian:
g++-aarch64-linux-gnu, qemu-user); BIASFIT_REQUIRE_AARCH64=1 (CI) makes
that a failure.
"""
import concurrent.futures
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import check_cuda_compile  # noqa: E402  (its load_setup: setup.py as a module)

CSRC = ROOT / "csrc"
SOURCE = ROOT / "tests" / "native" / "core_fits.cpp"
REQUIRE_AARCH64 = os.environ.get("BIASFIT_REQUIRE_AARCH64") == "1"

GXX = shutil.which("g++")
CLANG = shutil.which("clang++")
CROSS = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64")


setup = check_cuda_compile.load_setup()
OPENMP = ["-fopenmp"]
NO_OPENMP = ["-fopenmp-simd", "-pthread"]  # setup.openmp_flags() without OpenMP

# name: (compiler, OpenMP flags, extra flags, how to run)
BUILDS = {
    "x86-64 g++ openmp": (GXX, OPENMP, [], []),
    "x86-64 g++ no-openmp": (GXX, NO_OPENMP, [], []),
    "x86-64 clang no-openmp": (CLANG, NO_OPENMP, [], []),
    "aarch64 g++ openmp": (CROSS, OPENMP, ["-static"], [QEMU]),
    "aarch64 g++ no-openmp": (CROSS, NO_OPENMP, ["-static"], [QEMU]),
}
REFERENCE = "x86-64 g++ openmp"


def build_and_run(name, folder):
    """(command line, the run or None where it did not build, stderr, binary)."""
    compiler, openmp, extra, runner = BUILDS[name]
    binary = folder / name.replace(" ", "_")
    command = [compiler, "-std=c++17", f"-I{CSRC}", "-Wno-psabi",
               *setup.cxx_flags(["-O3"], openmp), *extra, str(SOURCE), "-o", str(binary)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return command, None, done.stderr[-3000:], binary
    ran = subprocess.run([*runner, str(binary)], capture_output=True, text=True, timeout=600)
    return command, ran, ran.stderr[-3000:], binary


def available(name):
    compiler, _, _, runner = BUILDS[name]
    return compiler is not None and None not in runner


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Every available build, compiled and run two at a time."""
    folder = tmp_path_factory.mktemp("native")
    names = [n for n in BUILDS if available(n)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(names, pool.map(lambda n: build_and_run(n, folder), names)))
    return results


def output_of(outputs, name):
    command, ran, stderr, _ = outputs[name]
    assert ran is not None, f"{name} did not build:\n{' '.join(command)}\n{stderr}"
    assert ran.returncode == 0, f"{name} exited {ran.returncode}:\n{ran.stdout[-3000:]}{stderr}"
    return ran.stdout


def test_reference_build_fits_the_tutorial_on_any_thread_count(outputs):
    if GXX is None:
        pytest.skip("no g++")
    text = output_of(outputs, REFERENCE)  # exit 0: 2 and 3 threads agree with 1
    lines = text.splitlines()
    # The tutorial's known result: epoch 34, final_bias -16.0019.
    assert lines[0].startswith("tutorial float32: status 1 epoch 34 -0x1.0007b6p+4 ")
    assert "tutorial float64: status 1 epoch 34 -0x1.0007b5624840dp+4 " in text
    # 2 dtypes x (tutorial, 2 sizes x 2 starts x 5 plans, 5 seven-parameter fits)
    assert len(lines) == 2 * (1 + 20 + 5)


def test_every_x86_instruction_set_gives_the_same_bits(outputs):
    # The reference runs the best this CPU has (AVX-512, AVX2 or the
    # baseline); BIASFIT_CPU_KERNEL picks the lower ones.
    if GXX is None:
        pytest.skip("no g++")
    reference = output_of(outputs, REFERENCE)
    binary = outputs[REFERENCE][3]
    for isa in ("baseline", "avx2"):
        env = dict(os.environ, BIASFIT_CPU_KERNEL=isa)
        ran = subprocess.run([str(binary)], capture_output=True, text=True, env=env, timeout=600)
        assert ran.returncode == 0 and ran.stdout == reference, isa


@pytest.mark.parametrize("name", [n for n in BUILDS if n != REFERENCE])
def test_build_gives_the_reference_bits(outputs, name):
    if not available(name):
        if name.startswith("aarch64"):
            missing = "aarch64-linux-gnu-g++" if CROSS is None else "qemu-aarch64"
            if REQUIRE_AARCH64:
                pytest.fail(f"BIASFIT_REQUIRE_AARCH64=1 but {missing} is missing")
            pytest.skip(f"no {missing} (Debian: g++-aarch64-linux-gnu, qemu-user)")
        pytest.skip(f"no {BUILDS[name][0] or 'compiler'} for {name}")
    if GXX is None:
        pytest.skip("no g++ for the reference build")
    reference = output_of(outputs, REFERENCE)
    got = output_of(outputs, name)
    differing = [(a, b) for a, b in zip(reference.splitlines(), got.splitlines()) if a != b]
    assert got == reference, f"{name} differs from {REFERENCE}: {differing[:3]}"


def test_setup_builds_without_openmp_where_the_compiler_refuses_it(tmp_path, monkeypatch, capsys):
    if GXX is None:
        pytest.skip("no g++")
    # A compiler that refuses -fopenmp (as Apple's clang does), else g++.
    fake = tmp_path / "no-openmp-c++"
    fake.write_text(f'#!/bin/sh\nfor a; do [ "$a" = -fopenmp ] && exit 1; done\nexec {GXX} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.delenv("BIASFIT_OPENMP", raising=False)
    monkeypatch.setenv("CXX", GXX)
    assert setup.openmp_flags() == (["-fopenmp"], ["-fopenmp"])
    monkeypatch.setenv("CXX", str(fake))
    assert setup.openmp_flags() == (NO_OPENMP, ["-pthread"])
    assert "building without OpenMP" in capsys.readouterr().err
    monkeypatch.setenv("BIASFIT_OPENMP", "1")
    with pytest.raises(SystemExit, match="BIASFIT_OPENMP=1"):
        setup.openmp_flags()
    monkeypatch.setenv("CXX", GXX)
    monkeypatch.setenv("BIASFIT_OPENMP", "0")
    assert setup.openmp_flags() == (NO_OPENMP, ["-pthread"])
