"""Data-parallel fitting: every process of a torch.distributed group holds a
shard of the data, and all of them train one model (final_bias, or any of
the seven parameters). This module holds only the collectives: the epoch
loop is biasfit/loop.py's, each engine's sums and step are its own
(model.loss and torch.optim; biasfit/engine.py's native ones).

When a process group is initialized (for example under `torchrun`),
biasfit.fit treats each rank's inputs and labels as its shard. Every epoch
each rank computes its shard's loss and the gradient of each trained
parameter, and ONE collective, an all_gather of every rank's
(loss, grads..., ok) row, hands every rank the whole table, which each sums
in rank order in float64. all_reduce would not
do: the order in which gloo or NCCL add the ranks' values is theirs and may
depend on timing, and then ranks could step differently or stop at
different epochs. The `ok` entry carries a failure on one rank to all of
them in that same collective, so every rank stops at the same epoch with an
error naming the failed rank instead of waiting forever in the next epoch.

Lockstep carries a failure anywhere else in the epoch loop (a callback, the
optimizer's step) in the next epoch's collective, or in one closing
collective as the fit ends, so every rank stops within an epoch's time.

Before the first epoch, check_shards gathers a description of every rank's
shard and settings, so a bad shard (labels of another shape, a dtype, any of
the seven starting values, the set of trained parameters or the optimizer's
settings different from rank 0's) stops every rank with the same message:
ranks that agree on the trained parameters send rows of one width. An
empty shard (more ranks than rows) adds zero sums. all_or_none does the
same for any step before the fit (the command line reads each rank's rows
in one).

None of them catches a rank that dies or hangs outside the epoch's computation:
its peers then fail in their collective when the backend sees the closed
connection or, at the latest, after the process group's timeout
(init_from_env sets DEFAULT_TIMEOUT; pass `timeout=` to
torch.distributed.init_process_group when initializing it yourself).
"""
import contextlib
import datetime
import math
import os

import torch
import torch.distributed as dist

from .datafile import shard_bounds

if dist.is_available():
    # Imported now, before any process group exists, on purpose: its
    # functions take `group=group.WORLD` as a default argument, evaluated when
    # the module is first imported. Imported later (torch.optim imports
    # torch._dynamo, which imports it, when fit builds its SGD), they would
    # hold the live default group forever; destroy_process_group could then
    # not free it, gloo's worker threads would outlive the script, and one
    # releasing a finished collective's tensors while the interpreter shuts
    # down aborts the process ("terminate called without an active
    # exception", SIGABRT) after its work is done.
    import torch.distributed.nn  # noqa: F401

# Long enough for a slow epoch on a large shard, short enough that a lost
# rank does not hold the others for torch's default of 30 minutes.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=5)


class DistributedFitError(RuntimeError):
    """A rank could not take part in a sharded fit; `ranks` are the ones
    that failed (empty when unknown: a peer vanished or timed out)."""

    def __init__(self, message: str, ranks=()):
        self.ranks = tuple(ranks)
        super().__init__(message)


def _never() -> bool:
    return False


# is_distributed() -> True when a torch.distributed process group is
# initialized: fit then trains on the union of every rank's data. Asked by
# every fit, the tutorial's 3-point one too: torch's own function, with no
# call around it.
is_distributed = dist.is_initialized if dist.is_available() else _never


def init_from_env(backend=None, timeout=DEFAULT_TIMEOUT) -> bool:
    """Joins the process group that torchrun describes in the environment
    (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT) when WORLD_SIZE > 1.

    backend: default "nccl" when CUDA is available, else "gloo". Returns
    whether this process is now part of a group.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timeout)
    return True


def shard_rows(n: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s rows of n as one contiguous block: the first
    n % world_size ranks take one row more than the others (the blocks
    biasfit.datafile.load_xy reads for a rank)."""
    return slice(*shard_bounds(n, rank, world_size))


def _ranks(ranks) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def _collective(fn, *args, what: str):
    try:
        fn(*args)
    except Exception as e:  # gloo and NCCL raise several types for a lost peer
        raise DistributedFitError(
            f"biasfit: rank {dist.get_rank()}: a collective ({what}) failed, so "
            f"this rank stops. Another rank probably exited or did not answer "
            f"within the process group's timeout: {e}") from e


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _shard_problem(inputs, labels):
    for name, t in (("inputs", inputs), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            return f"{name} is a {type(t).__name__}, not a tensor"
        if t.dtype not in (torch.float32, torch.float64):
            return f"{name} has dtype {t.dtype}; expected float32 or float64"
    if labels.dtype != inputs.dtype:
        return f"labels has dtype {labels.dtype} but inputs has dtype {inputs.dtype}"
    if labels.shape != inputs.shape:
        return (f"labels has shape {tuple(labels.shape)} but inputs has shape "
                f"{tuple(inputs.shape)}")
    return None


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def all_or_none(what: str):
    """Runs the block on every rank, then stops every rank if it raised on
    any: all raise the same DistributedFitError naming the ranks and their
    errors, so none is left waiting for the others. Without a process group
    the block's own exception propagates unchanged."""
    if not is_distributed():
        yield
        return
    failure = None
    try:
        yield
    except Exception as e:
        failure = e
    problem = None if failure is None else _describe(failure)
    everyone = [None] * dist.get_world_size()
    _collective(dist.all_gather_object, everyone, problem, what=what)
    bad = [r for r, p in enumerate(everyone) if p]
    if bad:
        details = "; ".join(f"rank {r}: {everyone[r]}" for r in bad)
        raise DistributedFitError(
            f"biasfit: {_ranks(bad)} of {len(everyone)} failed {what} ({details}); "
            f"every rank stops", bad) from failure


class ShardError(ValueError):
    """This rank's inputs and labels cannot be a shard."""


def check_shards(inputs, labels, settings: dict) -> int:
    """Before the first epoch: every rank's shard must be usable, of one
    dtype, and every rank must fit with the same settings (the seven
    starting values, which of them train, the optimizer and its
    hyperparameters, epochs, tol...). Raises the same
    DistributedFitError on every rank otherwise, naming the ranks that differ
    from rank 0 and the settings in which they differ. A rank may hold no
    rows (more ranks than rows): it adds zero sums. Returns the total number
    of rows."""
    with all_or_none("the shard check"):
        problem = _shard_problem(inputs, labels)
        if problem:
            raise ShardError(problem)
    mine = {"rows": inputs.numel(), "dtype": str(inputs.dtype),
            "settings": {k: repr(v) for k, v in settings.items()}}
    everyone = [None] * dist.get_world_size()
    _collective(dist.all_gather_object, everyone, mine, what="shard check")
    first = everyone[0]
    differ = [r for r, info in enumerate(everyone) if info["dtype"] != first["dtype"]]
    if differ:
        raise DistributedFitError(
            f"biasfit: {_ranks(differ)} of {len(everyone)} would fit with data of dtype "
            f"{everyone[differ[0]]['dtype']} but rank 0 with {first['dtype']}; every "
            f"rank must fit the same way, so every rank stops", differ)
    differ = [r for r, info in enumerate(everyone) if info["settings"] != first["settings"]]
    if differ:
        theirs = everyone[differ[0]]["settings"]
        keys = sorted(k for k in theirs.keys() | first["settings"].keys()
                      if theirs.get(k) != first["settings"].get(k))
        def shown(d):
            return "{" + ", ".join(f"{k!r}: {d.get(k, '(none)')}" for k in keys) + "}"
        raise DistributedFitError(
            f"biasfit: {_ranks(differ)} of {len(everyone)} would fit with settings "
            f"{shown(theirs)} but rank 0 with {shown(first['settings'])}; every rank "
            f"must fit the same way, so every rank stops", differ)
    rows = sum(info["rows"] for info in everyone)
    if rows == 0:
        raise DistributedFitError(
            f"biasfit: every rank's shard is empty ({len(everyone)} ranks, 0 rows in "
            f"all): there is nothing to fit", range(len(everyone)))
    return rows


def max_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The largest of every rank's one-value tensor (a float, exact), in
    value's dtype and device, the same on every rank: one collective."""
    everyone = [None] * dist.get_world_size()
    _collective(dist.all_gather_object, everyone, value.item(), what="the stall check")
    return torch.tensor(max(everyone), dtype=value.dtype, device=value.device)


def shard_sums(local_sums, inputs, like: torch.Tensor, width: int = 1):
    """local_sums, or for a rank that holds no rows, zero sums in `like`'s
    dtype and device (a loss and `width` gradients): an empty shard adds
    nothing to the loss or gradient (the native ops refuse empty inputs)."""
    if inputs.numel() != 0:
        return local_sums
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    grads = torch.zeros(width, dtype=like.dtype, device=like.device)
    return lambda: (zero, grads)


# The last entry of each rank's row in a per-epoch all_gather: the rank's
# sums follow, it failed (since its previous collective), or it has left the
# epoch loop (the closing collective; see Lockstep).
_FAILED, _SUMS, _DONE = 0.0, 1.0, 2.0


class Lockstep:
    """The epoch loop of a sharded fit, run inside `with Lockstep(width) as
    step:` on every rank, with `step.sums(local_sums, epoch, like)` as each
    epoch's collective; width: the number of gradients in a row (one per
    trained parameter), the same on every rank.

    Every rank of the group makes the same collectives: one per epoch and one
    more when it leaves the block (the closing one). An exception on a rank
    anywhere in the block (in its local sums, a callback, the optimizer's
    step) therefore travels to every rank in the next collective that every
    rank makes anyway, as a failed row, and within the time an epoch takes,
    every rank raises:
    - if every rank failed alike (same exception type and message, same
      epoch: e.g. the same divergence, or a callback that stops every rank
      at the same loss), each rank's own exception, as one process would;
    - else the same DistributedFitError naming the ranks that failed, the
      epoch and each one's error.
    Exceptions the group cannot agree on (a peer that vanished: the
    collective itself fails) and BaseExceptions such as KeyboardInterrupt
    pass through without another collective.
    """

    def __init__(self, width: int = 1, divide_by=1):
        self.width = width       # gradients per row
        self.divide_by = divide_by  # the total rows for the mean loss, else 1
        self.epoch = 0           # the epoch under way (its sums exchanged or next)
        self._settled = None     # an exception the group has agreed on

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is not None and (exc is self._settled or not isinstance(exc, Exception)):
            return False
        # Every row of a collective has one length: a loss, the gradients, the flag.
        row = torch.tensor([math.nan] * (1 + self.width) + [_DONE if exc is None else _FAILED],
                           dtype=torch.float64, device=_collective_device())
        self._exchange(row, _DONE, exc, self.epoch, what="the end of the fit")
        return False  # a failure raised above; else the block's own outcome stands

    def sums(self, local_sums, epoch: int, like: torch.Tensor):
        """This epoch's (loss, grad) summed over every rank (sum_over_ranks)."""
        self.epoch = epoch
        return sum_over_ranks(local_sums, epoch, like, width=self.width,
                              exchange=self._exchange, divide_by=self.divide_by)

    def _exchange(self, *args, **kwargs):
        try:
            return _exchange(*args, **kwargs)
        except Exception as e:  # every rank raises here alike: no more collectives
            self._settled = e
            raise


def _exchange(row, expect: float, failure, epoch: int, *, what: str):
    """all_gathers every rank's row and returns the table, or raises on
    every rank alike if a rank failed or is out of step."""
    rank, world = dist.get_rank(), dist.get_world_size()
    parts = [torch.empty_like(row) for _ in range(world)]
    _collective(dist.all_gather, parts, row, what=what)
    table = torch.stack(parts).tolist()
    failed = [r for r, entry in enumerate(table) if entry[-1] == _FAILED]
    if failed:
        # Rare: one more collective to hand every rank every failure's text.
        mine = None if failure is None else (epoch, type(failure).__name__, str(failure))
        everyone = [None] * world
        _collective(dist.all_gather_object, everyone, mine, what=f"{what}, reporting a failure")
        failed = [r for r, e in enumerate(everyone) if e is not None]
        if failure is not None and len(failed) == world and all(
                e == mine for e in everyone):
            raise failure  # every rank failed alike: as one process would
        epochs = sorted({everyone[r][0] for r in failed})
        details = "; ".join(f"rank {r}: {everyone[r][1]}: {everyone[r][2]}" for r in failed)
        raise DistributedFitError(
            f"biasfit: {_ranks(failed)} of {world} failed in "
            f"{'epoch' if len(epochs) == 1 else 'epochs'} {', '.join(map(str, epochs))} "
            f"({details}); every rank stops (rank {rank} here)", failed) from failure
    astray = [r for r, entry in enumerate(table) if entry[-1] != expect]
    if astray:
        raise DistributedFitError(
            f"biasfit: {_ranks(astray)} of {world} left the epoch loop at another epoch "
            f"than rank {rank} ({what}); every rank stops", astray)
    return table


def sum_over_ranks(local_sums, epoch: int, like: torch.Tensor, *, width: int = 1,
                   exchange=_exchange, divide_by=1):
    """One epoch's (loss, grad) summed over every rank's shard, identical
    bits on every rank.

    local_sums() -> this rank's (loss, grad) tensors, grad holding `width`
    values (one per trained parameter; the same width on every rank). Each
    value's sums are added in float64, in rank order, and returned in the
    dtype and on the device of `like` (the trained parameter), as the
    single-process loss and gradient are: grad 0-d for width 1, else of
    shape (width,). An exception in local_sums on any rank makes every rank
    raise DistributedFitError naming it and its error (or, when every rank
    raised the same, each its own exception). Inside a fit, Lockstep also
    carries failures from outside local_sums. divide_by: the sums are
    divided by it in float64 before the rounding (the total rows for the
    mean loss, as core/fit.h's divide_by).
    """
    device = _collective_device()
    failure = None
    try:
        loss, grad = local_sums()
        grad = grad.detach().double().reshape(-1)
        if grad.numel() != width:
            raise ValueError(f"biasfit: this rank's sums hold {grad.numel()} gradients, "
                             f"expected {width}")
        row = torch.cat([loss.detach().double().reshape(1), grad.to(loss.device),
                         torch.full((1,), _SUMS, dtype=torch.float64, device=loss.device)])
    except Exception as e:  # reported to every rank by _exchange, then re-raised
        failure = e
        row = torch.tensor([math.nan] * (1 + width) + [_FAILED], dtype=torch.float64)
    table = exchange(row.to(device), _SUMS, failure, epoch, what=f"epoch {epoch}")
    # Python floats are float64: each column is summed in rank order.
    total = table[0][:-1]
    for part in table[1:]:
        total = [t + v for t, v in zip(total, part[:-1])]
    if divide_by != 1:
        total = [t / divide_by for t in total]
    as_data = {"dtype": like.dtype, "device": like.device}
    return (torch.tensor(total[0], **as_data),
            torch.tensor(total[1] if width == 1 else total[1:], **as_data))
