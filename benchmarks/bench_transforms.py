"""What PyTorch's transforms cost over biasfit's ops against the same
network in plain PyTorch (biasfit/reference.py's formulas), float32, 1e5
points: the bias gradient by torch.func.grad, its second derivative, the
Hessian over the six weights, a jvp of predict along every weight, and
per-sample gradients (vmap of grad, 1e4 points).

    pytest benchmarks/bench_transforms.py --benchmark-only

or round-robin (one call of each in turn, so a passing load falls on both
alike), printing each cell's medians and the median of per-round ratios:

    python benchmarks/bench_transforms.py --rounds 15 --json out.json
"""
import argparse
import os
import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jvp, vmap

import biasfit
from report import cpu_model, write_run


def plain_predict(x, w, b):
    w00, b00, w01, w10, b10, w11 = w.unbind()
    return F.relu(F.relu(x * w00 + b00) * w01 + F.relu(x * w10 + b10) * w11 + b)


def plain_loss(x, y, w, b):
    return ((plain_predict(x, w, b) - y) ** 2).sum()


IMPLS = {"biasfit": (biasfit.predict, biasfit.fused_loss), "plain": (plain_predict, plain_loss)}


def cells():
    """name -> fn(predict, loss) -> a callable of no arguments."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(100_000, generator=g) * 2 - 0.5
    y = torch.rand(100_000, generator=g) * 3
    w, b = torch.tensor(biasfit.TUTORIAL_WEIGHTS), torch.tensor(-2.0)
    xs, ys = x[:10_000], y[:10_000]
    return {
        "grad_bias": lambda p, L: lambda: grad(lambda b: L(x, y, w, b))(b),
        "grad_grad_bias": lambda p, L: lambda: grad(grad(lambda b: L(x, y, w, b)))(b),
        "hessian_weights": lambda p, L: lambda: hessian(lambda w: L(x, y, w, b))(w),
        "jvp_predict_weights": lambda p, L: lambda: jvp(lambda w: p(x, w, b), (w,),
                                                        (torch.ones(6),)),
        "per_sample_grads_1e4": lambda p, L: lambda: vmap(
            grad(lambda b, xi, yi: L(xi[None], yi[None], w, b)), (None, 0, 0))(b, xs, ys),
    }


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", list(cells()))
def test_transform(benchmark, cell, impl):
    f = cells()[cell](*IMPLS[impl])
    benchmark.extra_info.update(cell=cell, impl=impl, threads=torch.get_num_threads())
    benchmark.group = f"transforms {cell}"
    benchmark.pedantic(f, rounds=5, warmup_rounds=1)


def interleaved(rounds):
    out = {}
    for name, make in cells().items():
        fs = {impl: make(*fns) for impl, fns in IMPLS.items()}
        got, want = fs["biasfit"](), fs["plain"]()
        for a, b in zip(*(t if isinstance(t, tuple) else (t,) for t in (got, want))):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-3), name
        times = {impl: [] for impl in fs}
        for _ in range(rounds):
            for impl, f in fs.items():
                start = time.perf_counter()
                f()
                times[impl].append(time.perf_counter() - start)
        ratio = statistics.median(p / q for p, q in zip(times["plain"], times["biasfit"]))
        medians = {i: statistics.median(t) for i, t in times.items()}
        out[name] = {"median_s": medians, "median_ratio": ratio}
        print(f"{name:24s} biasfit {medians['biasfit'] * 1e3:8.2f} ms  plain "
              f"{medians['plain'] * 1e3:8.2f} ms  plain/biasfit {ratio:5.2f}x", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="write the medians here")
    args = parser.parse_args()
    out = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "load_start": round(os.getloadavg()[0], 2)}
    out["cells"] = interleaved(args.rounds)
    write_run(out, args.json)


if __name__ == "__main__":
    main()
