"""Saving a trained BasicNN with its fit's settings and history, and loading it.

The file is torch.save of {"format", "state_dict", "metadata"}: the
state_dict's tensors (on the CPU, so the file loads anywhere) and the metadata
as a JSON string, which torch.load(weights_only=True) reads without pickle.
"""
import glob
import json
import os
import re
import stat
import tempfile
import time
import warnings

import torch

from .model import PARAM_NAMES, BasicNN

FORMAT = "biasfit-model-1"
_PARAMETERS = PARAM_NAMES
_DTYPES = (torch.float32, torch.float64)
# A temporary named .biasfit-<pid>-*.tmp belongs to a save in progress while
# that process lives; one without a pid (older biasfit) is stale after this.
_STALE_AFTER_S = 3600


class CheckpointError(ValueError):
    """A model file is missing, unreadable or not a biasfit model."""


def save_model(path, model, metadata: dict) -> None:
    """Write model's parameters and `metadata` (JSON-able) to `path` atomically:
    a reader sees the old file or the new one, never half of one.

    A symlink is written through (its target is replaced, the link kept); an
    existing file keeps its permission bits; temporaries left by a save that
    was killed are removed."""
    state = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    payload = {"format": FORMAT, "state_dict": state, "metadata": json.dumps(metadata)}
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    _remove_stale_temporaries(folder)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".biasfit-{os.getpid()}-", suffix=".tmp")
    try:
        os.chmod(tmp, mode)  # mkstemp's 0600 is for the temporary only
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_folder(folder)  # the rename itself survives a crash


def _remove_stale_temporaries(folder):
    for tmp in glob.glob(os.path.join(glob.escape(folder), ".biasfit-*.tmp")):
        m = re.fullmatch(r"\.biasfit-(\d+)-.*\.tmp", os.path.basename(tmp))
        try:
            if m:
                if _alive(int(m[1])):
                    continue
            elif time.time() - os.lstat(tmp).st_mtime < _STALE_AFTER_S:
                continue
            os.unlink(tmp)
        except OSError:
            pass  # another save's cleanup got there first, or not ours to remove


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_model(path, device="cpu"):
    """(model, metadata) from a file written by save_model; anything else
    raises CheckpointError with one line saying what is wrong."""
    try:
        with warnings.catch_warnings():
            # weights_only's unpickler warns about protocols it was not
            # written for before refusing a foreign pickle: the error says it.
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
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
    dtype = _check_parameters(path, state)
    metadata = payload.get("metadata")
    try:
        metadata = json.loads(metadata)
    except (TypeError, ValueError):
        metadata = None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path} has no readable metadata (a JSON object): "
                              f"not a file that biasfit train --save wrote")
    model = BasicNN(dtype=dtype)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: parameters do not fit BasicNN: "
                              f"{str(e).splitlines()[0]}") from None
    return model.to(device), metadata


def _check_parameters(path, state):
    """The parameters' one dtype, after checking each is a finite 0-d float
    tensor of float32 or float64."""
    for name in _PARAMETERS:
        value = state.get(name)
        if not isinstance(value, torch.Tensor):
            got = "missing" if value is None else f"a {type(value).__name__}, not a tensor"
            raise CheckpointError(f"{path}: parameter {name} is {got}")
        if value.dtype not in _DTYPES:
            raise CheckpointError(f"{path}: parameter {name} is "
                                  f"{str(value.dtype).removeprefix('torch.')}; a biasfit "
                                  f"model holds float32 or float64")
        if value.dim() != 0:
            raise CheckpointError(f"{path}: parameter {name} has shape "
                                  f"{tuple(value.shape)}; expected one value")
        if not torch.isfinite(value):
            raise CheckpointError(f"{path}: parameter {name} is {value.item()}")
    dtypes = {state[name].dtype for name in _PARAMETERS}
    if len(dtypes) > 1:
        raise CheckpointError(f"{path}: parameters mix float32 and float64")
    return dtypes.pop()
