"""Shared fixtures: every kernel test runs on each available device."""
import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA GPU on this machine")),
]

@pytest.fixture(params=DEVICES)
def device(request):
    dev = request.param
    if dev == "cuda":
        import biasfit
        if not biasfit.WITH_CUDA:
            pytest.skip("biasfit was built without CUDA")
    return torch.device(dev)


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    """The CUDA emulation harness (tests/cuda_emu/), built with g++ once a
    session: tests/test_cuda_emulated.py, test_cuda_emu_strict.py."""
    import emu_harness
    if emu_harness.GXX is None:
        pytest.skip("no g++ to build the CUDA emulation")
    binary = emu_harness.build(tmp_path_factory.mktemp("emu") / "harness")
    return emu_harness.Harness(binary)
