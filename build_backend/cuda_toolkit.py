"""Whether biasfit's CUDA kernels can be built here, and with which toolkit.

Needs a CUDA build of torch and a CUDA toolkit of the same major version.
The toolkit is CUDA_HOME (or CUDA_PATH) if set, else the one whose nvcc is on
PATH (a wrapper script there is asked where its compiler really lives), else
/usr/local/cuda. torch's own guess takes nvcc's folder's parent, which for
/usr/local/bin/nvcc is /usr/local: it then links -lcudart from the wrong place.
"""
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

HOW_TO_FORCE = ("BIASFIT_CUDA=1 makes a missing piece an error, "
                "BIASFIT_CUDA=0 skips the check")


@dataclass
class Toolkit:
    home: Optional[Path]   # None: no CUDA build
    reason: str            # why not, or what was found


def _real_home_of(nvcc: str) -> Path:
    """The toolkit behind an nvcc on PATH, which may be a wrapper script."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.cu"
        source.write_text("")
        done = subprocess.run([nvcc, "--dryrun", "-c", str(source), "-o", str(source) + ".o"],
                              capture_output=True, text=True, timeout=60)
    here = re.search(r"^#\$ _HERE_=(.+)$", done.stdout + done.stderr, re.M)
    bin_dir = Path(here.group(1).strip()) if here else Path(nvcc).resolve().parent
    return bin_dir.parent


def candidate_home() -> Optional[Path]:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return Path(os.environ[var])
    nvcc = shutil.which("nvcc")
    if nvcc:
        return _real_home_of(nvcc)
    default = Path("/usr/local/cuda")
    return default if default.exists() else None


def _toolkit_version(home: Path) -> Optional[str]:
    done = subprocess.run([str(home / "bin" / "nvcc"), "--version"],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"release (\d+\.\d+)", done.stdout)
    return found.group(1) if found else None


def _has_cudart(home: Path) -> bool:
    return any((home / lib / "libcudart.so").exists()
               for lib in ("lib64", "lib", "targets/x86_64-linux/lib"))


def find(torch_version: str, torch_cuda: Optional[str]) -> Toolkit:
    """The toolkit to build the CUDA kernels with, or why there is none."""
    if torch_cuda is None:
        return Toolkit(None, f"torch {torch_version} is a CPU build")
    home = candidate_home()
    if home is None or not (home / "bin" / "nvcc").is_file():
        return Toolkit(None, "no CUDA toolkit found (no nvcc on PATH, "
                             "CUDA_HOME unset, no /usr/local/cuda)")
    if not _has_cudart(home):
        return Toolkit(None, f"the CUDA toolkit at {home} has no libcudart.so")
    version = _toolkit_version(home)
    if version is None:
        return Toolkit(None, f"{home}/bin/nvcc --version names no release")
    if version.split(".")[0] != torch_cuda.split(".")[0]:
        return Toolkit(None, f"the CUDA toolkit at {home} is CUDA {version} but torch "
                             f"{torch_version} was built with CUDA {torch_cuda}; set "
                             f"CUDA_HOME to a CUDA {torch_cuda.split('.')[0]}.x toolkit")
    return Toolkit(home, f"CUDA {version} at {home}")
