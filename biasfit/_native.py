"""Loads the compiled extension, refusing one built for a different torch.

An extension compiled against one torch and imported under another fails in
obscure ways (undefined symbols, or worse, wrong ABI at run time), so the
torch version recorded at build time is compared first.
"""
import torch

REBUILD = "pip install --no-build-isolation --force-reinstall ."


def _load():
    try:
        from . import _build_info
    except ImportError:
        raise ImportError(
            "biasfit's compiled extension is missing (no build info found). "
            f"Build it from the source folder with: {REBUILD}") from None
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"biasfit was built against torch {_build_info.TORCH_VERSION} but "
            f"torch {torch.__version__} is installed. Rebuild it from the "
            f"source folder with: {REBUILD}")
    try:
        from . import _C  # noqa: F401  (loading it registers torch.ops.biasfit)
    except ImportError as e:
        raise ImportError(
            f"biasfit's compiled extension failed to load under torch "
            f"{torch.__version__}: {e}. Rebuild it with: {REBUILD}") from e
    return _build_info.WITH_CUDA


WITH_CUDA = _load()
