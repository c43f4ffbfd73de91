"""Saving a trained BasicNN with its fit's settings and history, and loading it.

The file is torch.save of {"format", "state_dict", "metadata"}: the
state_dict's tensors (on the CPU, so the file loads anywhere) and the metadata
as a JSON string, which torch.load(weights_only=True) reads without pickle.
"""
import json
import os
import tempfile

import torch

from .model import BasicNN

FORMAT = "biasfit-model-1"


class CheckpointError(ValueError):
    """A model file is missing, unreadable or not a biasfit model."""


def save_model(path, model, metadata: dict) -> None:
    """Write model's parameters and `metadata` (JSON-able) to `path` atomically:
    a reader sees the old file or the new one, never half of one."""
    state = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    payload = {"format": FORMAT, "state_dict": state, "metadata": json.dumps(metadata)}
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".biasfit-", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary only
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_model(path, device="cpu"):
    """(model, metadata) from a file written by save_model."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:  # torch.load's errors vary with what the file holds
        raise CheckpointError(f"{path} is not a biasfit model file "
                              f"({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a biasfit model file "
                              f"(expected format {FORMAT})")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or "final_bias" not in state:
        raise CheckpointError(f"{path} holds no final_bias parameter")
    model = BasicNN(dtype=state["final_bias"].dtype).to(device)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: parameters do not fit BasicNN: "
                              f"{str(e).splitlines()[0]}") from None
    return model, json.loads(payload["metadata"])
