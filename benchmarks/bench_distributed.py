"""What one epoch of a sharded fit costs with 2 processes on this machine.

Run: pytest benchmarks/bench_distributed.py

Rank 0 is this pytest process; rank 1 is this file run as a script, which
repeats whatever rank 0 announces (a broadcast before each benchmark), so
every collective has its partner. Each process uses one thread. Per data
size n (grouped "N=... float64 distributed"):

- compute: one rank's pass over its half of the data (n/2 points), the
  sharded fused engine's local_sums
- reduce:  the epoch's collective alone: all_gather of every rank's (loss,
  grad, ok) and the rank-order sum (biasfit.distributed.sum_over_ranks)
- epoch:   both, as a sharded fit runs them each epoch
- whole:   one process's pass over all n points, what the two halves replace
"""
import datetime
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from biasfit import distributed, engine
from report import group_name
from biasfit.train import tutorial_weights

OPS = ("compute", "reduce", "epoch", "whole")
SIZES = (3, 2**16, 2**20, 2**23)
ROUNDS, WARMUP = 40, 5
SGD = {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
       "weight_decay": 0.0, "maximize": False}


def make_op(op, n, rank):
    """The callable that benchmark `op` times on `rank`, for n points."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, generator=gen, dtype=torch.float64)
    y = torch.rand(n, generator=gen, dtype=torch.float64)
    if op != "whole":
        rows = distributed.shard_rows(n, rank, 2)
        x, y = x[rows], y[rows]
    bias = torch.tensor(-3.0, dtype=torch.float64)
    local_sums, param, _ = engine.sgd_parts(x, y, tutorial_weights(x), bias, SGD)
    if op in ("compute", "whole"):
        return local_sums
    if op == "reduce":
        sums = local_sums()
        return lambda: distributed.sum_over_ranks(lambda: sums, 0, param)
    return lambda: distributed.sum_over_ranks(local_sums, 0, param)


def announce(op, calls, n):
    """Rank 0 tells rank 1 what to run next; op -1 ends it."""
    dist.broadcast(torch.tensor([op, calls, n]), src=0)


def follow():
    """Rank 1: runs what rank 0 announces until told to stop."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    while True:
        command = torch.zeros(3, dtype=torch.int64)
        dist.broadcast(command, src=0)
        op, calls, n = command.tolist()
        if op < 0:
            break
        # In "whole", rank 1 idles: one process works on all the data.
        run = make_op(OPS[op], n, 1) if OPS[op] != "whole" else None
        for _ in range(calls if run else 0):
            run()
    dist.barrier()  # gloo can abort a process that tears down mid-send
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank1():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    proc = subprocess.Popen([sys.executable, __file__], env=env)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=2, timeout=datetime.timedelta(seconds=120))
    try:
        yield proc
        announce(-1, 0, 0)
        dist.barrier()
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(threads)
        proc.wait(timeout=60)


@pytest.mark.parametrize("n", [pytest.param(
    n, marks=pytest.mark.benchmark(group=group_name(n, "float64", "distributed")))
    for n in SIZES])
@pytest.mark.parametrize("op", OPS)
def test_epoch_parts(benchmark, rank1, op, n):
    run = make_op(op, n, 0)
    announce(OPS.index(op), ROUNDS + WARMUP, n)
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)


if __name__ == "__main__":
    follow()
