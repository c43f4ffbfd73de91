"""biasfit.fit_many under torchrun: every process holds all the fits, runs
its block of them, and every process gets every result. Run alone, the same
fits in one process: the printed results are the same."""
import torch
import torch.distributed as dist

import biasfit
from biasfit.distributed import init_from_env

sharded = init_from_env()  # under torchrun: join the group (gloo on the CPU)
rank = dist.get_rank() if sharded else 0

x, y = biasfit.tutorial_data()
K = 1000
starts = torch.linspace(-3.0, 3.0, K)  # one starting final_bias per fit
lrs = torch.linspace(0.01, 0.2, K)     # and one learning rate
result = biasfit.fit_many(x.repeat(K, 1), y.repeat(K, 1), bias=starts, lr=lrs)
if rank == 0:
    print(len(result), "fits:", result.counts())
    print("epochs run in all:", int(result.epochs.sum()))
    print("fit 0 and fit 999:", result.final_bias[[0, -1]].tolist())
if sharded:
    dist.barrier()
    dist.destroy_process_group()
