"""Bad input raises a clear error that names the argument."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import biasfit
from biasfit import _native

X = torch.tensor([0.0, 0.5, 1.0])
Y = torch.tensor([0.0, 1.0, 0.0])
W = torch.tensor(biasfit.TUTORIAL_WEIGHTS)
B = torch.tensor(0.0)


@pytest.mark.parametrize("args, error, message", [
    ((X, Y[:2], W, B), ValueError, "labels has shape"),
    ((X.int(), Y, W, B), ValueError, "inputs must be float32 or float64, got Int"),
    ((X, Y.double(), W, B), ValueError, "labels has dtype Double but inputs has dtype Float"),
    ((X, Y, W.double(), B), ValueError, "weights has dtype Double"),
    ((X, Y, B.double(), B), ValueError, "weights has dtype Double"),
    ((X, Y, W[:5], B), ValueError, "weights must hold 6 values .* got 5"),
    ((X, Y, W, W[:2]), ValueError, "bias must hold one value, got 2"),
])
def test_fused_loss_rejects(args, error, message):
    with pytest.raises(error, match=message):
        biasfit.fused_loss(*args)


def test_raw_ops_reject_half_and_fits_reject_empty():
    # (The functional forms compute float16 in float32, and empty data
    # gives an empty prediction and a loss of 0: tests/test_transforms.py.)
    with pytest.raises(ValueError, match="inputs must be float32 or float64, got Half"):
        torch.ops.biasfit.fused_loss(X.half(), Y.half(), W.half(), B.half())
    with pytest.raises(ValueError, match="inputs is empty: a fit needs at least one point"):
        torch.ops.biasfit.fit_sgd(X[:0], Y[:0], W, B, 0.1, 0.0, 0.0, False, 0.0, False, 10, 1e-4)
    for engine in biasfit.train.ENGINES:
        with pytest.raises(ValueError, match="inputs is empty: a fit needs at least one point"):
            biasfit.fit(biasfit.BasicNN(), X[:0], Y[:0], engine=engine)


def test_predict_rejects():
    with pytest.raises(ValueError, match="weights must hold 6 values"):
        biasfit.predict(X, W[:4], B)
    with pytest.raises(ValueError, match="bias has dtype Double"):
        biasfit.predict(X, W, B.double())


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-0.1), "lr must be >= 0"),
    (dict(lr=float("nan")), "lr must be >= 0"),
    (dict(epochs=-1), "epochs must be an int >= 0"),
    (dict(epochs=2.5), "epochs must be an int >= 0"),
    (dict(tol=-1e-4), "tol must be >= 0"),
])
@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_fit_rejects_bad_settings(kwargs, message, engine):
    with pytest.raises(ValueError, match=message):
        biasfit.fit(biasfit.BasicNN(), X, Y, engine=engine, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(momentum=-1.0), "momentum must be >= 0"),
    (dict(weight_decay=-1.0), "weight_decay must be >= 0"),
    (dict(nesterov=True), "nesterov requires momentum > 0"),
    (dict(momentum=0.9, dampening=0.1, nesterov=True), "nesterov requires"),
])
def test_fit_fused_rejects_bad_sgd_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        biasfit.fit_fused(X, Y, **kwargs)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(inputs=[0.0, 0.5, 1.0]), TypeError, "inputs must be a tensor, got list"),
    (dict(labels=None), TypeError, "labels must be a tensor, got NoneType"),
    (dict(weights=(1.0,) * 6), TypeError, "weights must be a tensor, got tuple"),
    (dict(bias=torch.zeros(2)), ValueError, "bias must hold one value, got 2"),
    (dict(bias="0"), TypeError, "bias must be a number or a one-value tensor, got '0'"),
    (dict(labels=Y.double()), ValueError, "labels has dtype Double but inputs has dtype Float"),
])
def test_fit_fused_rejects_bad_arguments(kwargs, error, message):
    args = dict(inputs=X, labels=Y)
    args.update(kwargs)
    inputs, labels = args.pop("inputs"), args.pop("labels")
    with pytest.raises(error, match=message):
        biasfit.fit_fused(inputs, labels, **args)


def test_fit_fused_takes_the_bias_as_a_number_or_a_tensor():
    as_tensor = biasfit.fit_fused(X, Y, bias=torch.tensor(-1.0, dtype=torch.float64))
    assert biasfit.fit_fused(X, Y, bias=-1) == as_tensor


def test_fit_rejects_an_unknown_engine():
    with pytest.raises(ValueError, match="engine must be one of"):
        biasfit.fit(biasfit.BasicNN(), X, Y, engine="turbo")


def test_fused_engine_names_the_engine_for_other_optimizers():
    model = biasfit.BasicNN()
    rmsprop = torch.optim.RMSprop(model.parameters())
    with pytest.raises(TypeError, match="SGD, Adam or AdamW only, got RMSprop; use "
                                        "engine='autograd'"):
        biasfit.fit(model, X, Y, optimizer=rmsprop, engine="fused")


def test_dtype_mismatch_between_model_and_data_is_named():
    with pytest.raises(ValueError, match="weights has dtype Double but inputs has dtype Float"):
        biasfit.fit(biasfit.BasicNN().double(), X, Y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tensors_on_different_devices_are_named():
    if not biasfit.WITH_CUDA:
        with pytest.raises(RuntimeError, match="built without CUDA"):
            biasfit.fused_loss(X.cuda(), Y.cuda(), W.cuda(), B.cuda())
        return
    with pytest.raises(ValueError, match="labels is on cpu but inputs is on cuda"):
        biasfit.fused_loss(X.cuda(), Y, W.cuda(), B.cuda())


def test_torch_older_than_the_build_target_is_refused(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.9.1+cpu")
    with pytest.raises(ImportError) as err:
        _native._load()
    text = str(err.value)
    assert f"needs torch >= {_native.TORCH_FLOOR}" in text
    assert "torch 2.9.1+cpu is installed" in text
    assert "pip install --no-deps --force-reinstall ." in text


@pytest.mark.parametrize("version", ["2.14.1+cu130", "3.0.0"])
def test_newer_torch_is_accepted(monkeypatch, version):
    # The stable ABI build runs with every torch from its target up.
    monkeypatch.setattr(torch, "__version__", version)
    assert _native._load() == biasfit.WITH_CUDA


def test_import_from_a_source_folder_without_a_build_says_so(tmp_path):
    root = Path(__file__).resolve().parent.parent  # the checkout or unpacked sdist
    (tmp_path / "setup.py").write_text((root / "setup.py").read_text())
    shutil.copytree(root / "biasfit", tmp_path / "biasfit",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    done = subprocess.run([sys.executable, "-c", "import biasfit"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "imported from the source folder" in last and "pip install -e ." in last
    assert "run Python from another folder" in last
    assert "circular" not in done.stderr


@pytest.mark.parametrize("which", ["labels", "weights", "bias"])
def test_meta_tensor_mixed_with_cpu_ones_is_refused(which):
    # Any meta argument sends the call to the fake kernel, which once
    # returned uninitialised CPU memory as the loss.
    args = dict(inputs=X, labels=Y, weights=W, bias=B)
    args[which] = args[which].to("meta")
    with pytest.raises(ValueError, match=f"{which} is on meta but inputs is on cpu"):
        biasfit.fused_loss(**args)
    with pytest.raises(ValueError, match=f"{which} is on meta but inputs is on cpu"):
        torch.ops.biasfit.fit_sgd(*args.values(), 0.1, 0.0, 0.0, False, 0.0, False, 100, 1e-4)


def test_all_meta_arguments_give_meta_results():
    loss = biasfit.fused_loss(X.to("meta"), Y.to("meta"), W.to("meta"), B.to("meta"))
    assert loss.device.type == "meta" and loss.shape == ()


def test_fit_fused_with_a_meta_weight_is_refused():
    with pytest.raises(ValueError, match="weights is on meta but inputs is on cpu"):
        biasfit.fit_fused(X, Y, weights=W.to("meta"), epochs=100)
