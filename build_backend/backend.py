"""biasfit's PEP 517 build backend: setuptools', building against the torch
that the environment being installed into already has.

`pip install .` builds in an isolated environment that sees none of the
target's packages, so a plain `torch` build requirement makes pip fetch the
newest torch (a CUDA build of several GB) even when the target has a CPU
torch. Asking for exactly the installed release instead reuses the same
wheel (pip's cache or the index it came from); with no torch installed, any
torch from the floor up builds it (the binary runs with every torch from
the floor up: biasfit/_version.py).
"""
import importlib.metadata
import re
import sysconfig
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  (the hooks we keep as they are)
    build_editable, build_sdist, build_wheel, get_requires_for_build_sdist,
    prepare_metadata_for_build_editable, prepare_metadata_for_build_wheel)

ROOT = Path(__file__).resolve().parent.parent


def torch_floor() -> str:
    text = (ROOT / "biasfit" / "_version.py").read_text()
    return re.search(r'^TORCH_FLOOR = "([\d.]+)"', text, re.M).group(1)


def installed_torch():
    """The torch version in the environment pip installs into, or None.

    Build isolation only hides that environment's site-packages from
    sys.path; sys.prefix (hence sysconfig's paths) is still the target's.
    """
    paths = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    for dist in importlib.metadata.distributions(path=paths):
        if (dist.metadata["Name"] or "").lower() == "torch":
            return dist.version
    return None


def release(version: str) -> tuple:
    return tuple(int(p) for p in re.match(r"\d+(?:\.\d+)*", version).group(0).split("."))


def torch_requirement() -> str:
    floor = torch_floor()
    version = installed_torch()
    if version is not None and release(version) >= release(floor):
        return f"torch=={version}"
    return f"torch>={floor}"


def get_requires_for_build_wheel(config_settings=None):
    return (_setuptools.get_requires_for_build_wheel(config_settings)
            + [torch_requirement()])


def get_requires_for_build_editable(config_settings=None):
    return (_setuptools.get_requires_for_build_editable(config_settings)
            + [torch_requirement()])
