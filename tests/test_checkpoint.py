"""biasfit.checkpoint: atomic saves, and loads that refuse what is not a model."""
import pytest
import torch

import biasfit
from biasfit.checkpoint import CheckpointError, load_model, save_model


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
