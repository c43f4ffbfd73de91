import torch.distributed as dist

import biasfit
from biasfit.distributed import init_from_env, shard_rows

# Under torchrun with 2 or more processes: joins their group (torchrun's RANK,
# WORLD_SIZE, MASTER_ADDR...; gloo on CPU, nccl on GPU). Else this one process fits.
sharded = init_from_env()
rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)

x, y = biasfit.tutorial_data()          # every process loads the same data...
rows = shard_rows(len(x), rank, world)  # ...and keeps its contiguous block of rows
result = biasfit.fit(biasfit.BasicNN(), x[rows], y[rows], engine="fused")
if rank == 0:
    print(f"{result.epochs_run} epochs, final_bias = {result.final_bias:.4f}")

model = biasfit.BasicNN()               # all seven parameters this time
for p in model.parameters():
    p.requires_grad_(True)
result = biasfit.fit(model, x[rows], y[rows], lr=0.003, engine="fused")
if rank == 0:
    print(f"{result.epochs_run} epochs, w10 = {result.params['w10']:.3f}")
if sharded:
    dist.barrier()  # no process tears down while another still sends
    dist.destroy_process_group()
