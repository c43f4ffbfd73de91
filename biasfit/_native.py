"""Loads the compiled extensions: biasfit._C (the ops) and biasfit._direct.

biasfit._C is built on PyTorch's stable ABI for the torch release in
biasfit/_version.py (TORCH_FLOOR), so it runs under that torch and every
later one: the only torch refused here is an older one, before loading
anything that would fail on it in obscure ways.
"""
import re
from pathlib import Path

import torch

from ._version import TORCH_FLOOR, __version__

REINSTALL = "pip install --no-deps --force-reinstall ."


def _release(version: str) -> tuple:
    return tuple(int(p) for p in re.match(r"\d+(?:\.\d+)*", version).group(0).split("."))


def _from_source_folder() -> bool:
    """Whether biasfit is being imported from a checkout that has no build."""
    here = Path(__file__).resolve().parent
    return (here.parent / "setup.py").is_file() and not any(here.glob("_C*.so"))


def _load():
    if _release(torch.__version__) < _release(TORCH_FLOOR):
        raise ImportError(
            f"biasfit {__version__} needs torch >= {TORCH_FLOOR}, but torch "
            f"{torch.__version__} is installed. Upgrade torch "
            f"(pip install 'torch>={TORCH_FLOOR}'), or build biasfit for the "
            f"installed torch alone from its source folder: {REINSTALL}")
    if _from_source_folder():
        here = Path(__file__).resolve().parent
        raise ImportError(
            f"biasfit is being imported from the source folder {here.parent}, which "
            f"has no compiled extension (biasfit/_C*.so). To use the installed "
            f"biasfit, run Python from another folder; to work on the source, "
            f"build it in place with: pip install -e .")
    try:
        from . import _C  # noqa: F401  (loading it registers torch.ops.biasfit)
        from . import _direct  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"biasfit's compiled extension failed to load under torch "
            f"{torch.__version__}: {e}. Rebuild biasfit alone, from its source "
            f"folder: {REINSTALL}") from e
    return bool(_C.WITH_CUDA)


WITH_CUDA = _load()
