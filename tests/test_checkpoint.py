"""biasfit.checkpoint: atomic saves, and loads that refuse what is not a model."""
import pytest
import torch

import biasfit
from biasfit.checkpoint import CheckpointError, load_model, save_model
from biasfit.model import PARAM_NAMES
from helpers import CHILD_CWD


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_keeps_parameters_dtype_and_metadata(tmp_path, dtype):
    model = biasfit.BasicNN(-16.0019, dtype=dtype)
    save_model(tmp_path / "m.pt", model, {"losses": [1.5, 0.25], "note": "x"})
    loaded, meta = load_model(tmp_path / "m.pt")
    assert meta == {"losses": [1.5, 0.25], "note": "x"}
    assert loaded.final_bias.dtype == dtype
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.linspace(-1, 2, 31, dtype=dtype)
    assert torch.equal(loaded(x), model(x))


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_model(path, biasfit.BasicNN(1.0), {"first": True})
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, biasfit.BasicNN(2.0), {"first": False})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_load_refuses_other_files(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read .*: No such file"):
        load_model(tmp_path / "none.pt")
    (tmp_path / "text.pt").write_text("x,y\n1,2\n")
    with pytest.raises(CheckpointError, match="is not a biasfit model file"):
        load_model(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="expected format biasfit-model-1"):
        load_model(tmp_path / "other.pt")


# -- issue 14: crafted files, file modes, symlinks, killed saves ---------------------

def write_payload(path, **changes):
    """A model file as save_model writes it, with `changes` to its payload
    (a state_dict change is a dict of parameter -> value, None to drop it)."""
    state = {n: t.clone() for n, t in biasfit.BasicNN(-16.0).state_dict().items()}
    for name, value in changes.pop("state", {}).items():
        if value is None:
            del state[name]
        else:
            state[name] = value(state[name]) if callable(value) else value
    payload = {"format": "biasfit-model-1", "state_dict": state, "metadata": "{}"}
    payload.update(changes)
    payload = {k: v for k, v in payload.items() if v is not None}
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("changes, message", [
    (dict(state={"final_bias": -16.0}), "parameter final_bias is a float, not a tensor"),
    (dict(state={"final_bias": lambda t: t.int()}), "parameter final_bias is int32"),
    (dict(state={n: (lambda t: t.half()) for n in PARAM_NAMES}),
     "parameter w00 is float16; a biasfit model holds float32 or float64"),
    (dict(state={"w01": lambda t: t.double()}), "parameters mix float32 and float64"),
    (dict(state={"final_bias": torch.zeros(3)}), r"final_bias has shape \(3,\)"),
    (dict(state={"final_bias": torch.tensor(float("nan"))}), "parameter final_bias is nan"),
    (dict(state={"w10": None}), "parameter w10 is missing"),
    (dict(metadata=None), "has no readable metadata"),
    (dict(metadata="{not json"), "has no readable metadata"),
    (dict(metadata="[1, 2]"), "has no readable metadata"),
])
def test_load_refuses_crafted_files_with_one_line(tmp_path, changes, message):
    path = write_payload(tmp_path / "m.pt", **changes)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_loading_a_foreign_pickle_warns_nothing(tmp_path, recwarn):
    import pickle
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(CheckpointError, match="is not a biasfit model file"):
        load_model(tmp_path / "p.pt")
    assert [str(w.message) for w in recwarn] == []


def test_saving_over_a_file_keeps_its_mode(tmp_path):
    import os
    import stat
    path = tmp_path / "m.pt"
    save_model(path, biasfit.BasicNN(1.0), {})
    os.chmod(path, 0o600)
    save_model(path, biasfit.BasicNN(2.0), {"second": True})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_model(path)[1] == {"second": True}


def test_saving_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "m.pt"
    save_model(target, biasfit.BasicNN(1.0), {"n": 1})
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    save_model(link, biasfit.BasicNN(2.0), {"n": 2})
    assert link.is_symlink() and link.resolve() == target
    assert load_model(target)[1] == {"n": 2}
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["m.pt"]


def test_a_killed_saves_temporary_is_removed_by_the_next_save(tmp_path):
    import signal
    import subprocess
    import sys
    # A save that hangs inside torch.save, then SIGKILL: its temporary stays.
    code = ("import sys, time, torch, biasfit\n"
            "from biasfit.checkpoint import save_model\n"
            "def hang(obj, f):\n"
            "    f.write(b'half'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
            "torch.save = hang\n"
            f"save_model({str(tmp_path / 'm.pt')!r}, biasfit.BasicNN(), {{}})\n")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=CHILD_CWD, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline() == "writing\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    left = list(tmp_path.glob(".biasfit-*.tmp"))
    assert len(left) == 1
    # A live save's temporary (this process's) must survive the cleanup.
    import os
    live = tmp_path / f".biasfit-{os.getpid()}-live.tmp"
    live.write_bytes(b"in progress")
    save_model(tmp_path / "m.pt", biasfit.BasicNN(3.0), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.pt", live.name])
    assert load_model(tmp_path / "m.pt")[0].final_bias.item() == 3.0
