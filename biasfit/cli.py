"""The `biasfit` command line: fit final_bias to data, and predict with a saved model.

  biasfit train [--data FILE] [--lr ...] [--json] [--plot FIG.png] [--save MODEL]
  biasfit predict --model MODEL (--data FILE | --x X [X ...])

Every error ends the command with one line on stderr and a non-zero exit:
2 for a bad option, 1 for bad data, a failed fit or an unwritable output.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.distributed as dist
from tqdm import tqdm

import biasfit
from . import distributed
from .checkpoint import CheckpointError, load_model, save_model
from .datafile import DataFileError, load_x, load_xy
from .plot import PlotUnavailable, plot_fit, require_matplotlib
from .train import ENGINES

# A progress bar appears once a fit has run this long (and stderr is a terminal).
PROGRESS_DELAY_S = 1.0
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class UsageError(Exception):
    """An option value that the parser alone cannot judge (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(minimum=None, integer=False):
    """An argparse type: a finite float (or int) >= minimum."""
    def parse(text):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value
    return parse


def _device(name) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available on this machine")
    if name == "cuda" and not biasfit.WITH_CUDA:
        raise UsageError("--device cuda: this biasfit was built without CUDA support")
    return torch.device(name)


def _check_output(path, option):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: folder {folder} does not exist")


def _progress(total, stream=None, shown=True):
    stream = stream or sys.stderr
    return tqdm(total=total, unit="epoch", delay=PROGRESS_DELAY_S, leave=False,
                file=stream, disable=not (shown and stream.isatty()))


def _settings(args, n_points) -> dict:
    names = ("data", "x_col", "y_col", "lr", "epochs", "tol", "momentum", "nesterov",
             "weight_decay", "engine", "device", "dtype", "init_bias")
    return {"points": n_points, **{name: getattr(args, name) for name in names}}


def _record(result, settings) -> dict:
    """What --json prints and --save stores beside the parameters."""
    final_loss = result.final_loss if math.isfinite(result.final_loss) else None
    return {
        "result": {"epochs_run": result.epochs_run, "final_bias": result.final_bias,
                   "final_loss": final_loss, "converged": result.converged},
        "losses": result.losses,
        "settings": settings,
        "versions": {"biasfit": biasfit.__version__, "torch": torch.__version__},
    }


def _train(args) -> int:
    device, dtype = _device(args.device), DTYPES[args.dtype]
    if args.nesterov and args.momentum <= 0:
        raise UsageError("--nesterov needs --momentum > 0")
    if args.plot:
        require_matplotlib()
        _check_output(args.plot, "--plot")
    if args.save:
        _check_output(args.save, "--save")
    # Under torchrun every process reads and fits its own block of rows;
    # biasfit.fit adds up the blocks, and rank 0 alone reports.
    sharded = distributed.init_from_env(backend="nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    if sharded and args.plot:
        raise UsageError("--plot draws every point, but under torchrun each process "
                         "holds only its shard: plot from a single process")
    with distributed.all_or_none("reading the data"):
        if args.data:
            shard = {"rank": rank, "world_size": world} if sharded else {}
            inputs, labels = load_xy(args.data, args.x_col, args.y_col, dtype=dtype, **shard)
        else:
            inputs, labels = biasfit.tutorial_data()
            rows = distributed.shard_rows(len(inputs), rank, world)
            inputs, labels = inputs[rows].to(dtype), labels[rows].to(dtype)
    inputs, labels = inputs.to(device), labels.to(device)

    model = biasfit.BasicNN(args.init_bias, dtype=dtype).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                nesterov=args.nesterov, weight_decay=args.weight_decay)
    with _progress(args.epochs, shown=rank == 0) as bar:
        def show(epoch, loss, bias):
            bar.update()
            if not args.json and rank == 0:
                tqdm.write(f"epoch {epoch:4d}  total_loss {loss:.6g}  final_bias {bias:.6g}",
                           file=sys.stdout)
        result = biasfit.fit(model, inputs, labels, optimizer=optimizer, epochs=args.epochs,
                             tol=args.tol, callback=show, engine=args.engine)

    points = torch.tensor(len(inputs), device=device)
    if sharded:
        dist.all_reduce(points)
    if rank != 0:
        return 0
    record = _record(result, _settings(args, int(points)))
    if args.json:
        print(json.dumps(record, allow_nan=False))
    else:
        state = "converged" if result.converged else "did not converge"
        print(f"{state} after {result.epochs_run} epochs: final_bias = "
              f"{result.final_bias:.4f}, total_loss = {result.final_loss:.3g}")
    if args.save:
        save_model(args.save, model, record)
        _note(args, f"saved the model to {args.save}")
    if args.plot:
        plot_fit(args.plot, model, inputs, labels, result.losses)
        _note(args, f"saved the plot to {args.plot}")
    return 0


def _note(args, text):
    if not args.json:  # --json's stdout holds the JSON object only
        print(text)


def _predict(args) -> int:
    device = _device(args.device)
    model, _ = load_model(args.model, device)
    dtype = model.final_bias.dtype
    if args.data:
        inputs = load_x(args.data, args.x_col, dtype=dtype)
    else:
        inputs = torch.tensor(args.x, dtype=dtype)
    with torch.no_grad():
        outputs = model(inputs.to(device)).cpu()
    digits = 9 if dtype == torch.float32 else 17  # enough to round-trip
    print("x,prediction")
    for x, y in zip(inputs.tolist(), outputs.tolist()):
        print(f"{x:.{digits}g},{y:.{digits}g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="biasfit", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version",
                        version=f"biasfit {biasfit.__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fit final_bias (default: the tutorial data)")
    train.add_argument("--data", metavar="FILE",
                       help="CSV/text (header optional), .npy of shape (N, 2), or .npz with x, y")
    train.add_argument("--x-col", help="input column: header name or 0-based index")
    train.add_argument("--y-col", help="label column: header name or 0-based index")
    train.add_argument("--lr", type=_number(0), default=0.1, help="learning rate (0.1)")
    train.add_argument("--epochs", type=_number(0, integer=True), default=100,
                       help="most epochs to run (100)")
    train.add_argument("--tol", type=_number(0), default=1e-4,
                       help="stop once the total loss is below this (1e-4)")
    train.add_argument("--momentum", type=_number(0), default=0.0, help="SGD momentum (0)")
    train.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    train.add_argument("--weight-decay", type=_number(0), default=0.0, help="L2 penalty (0)")
    train.add_argument("--engine", choices=ENGINES, default="autograd",
                       help="autograd: one step per Python iteration; fused: one native call")
    train.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    train.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    train.add_argument("--init-bias", type=_number(), default=0.0,
                       help="starting final_bias (0)")
    train.add_argument("--json", action="store_true",
                       help="print one JSON object (result, losses, settings, versions)")
    train.add_argument("--plot", metavar="FILE.png",
                       help="save the fitted curve and the loss per epoch (needs matplotlib)")
    train.add_argument("--save", metavar="FILE", help="save the trained model and its history")
    train.set_defaults(run=_train)

    predict = sub.add_parser("predict", help="predict with a model saved by train --save")
    predict.add_argument("--model", metavar="FILE", required=True)
    given = predict.add_mutually_exclusive_group(required=True)
    given.add_argument("--data", metavar="FILE", help="inputs from a data file")
    given.add_argument("--x", type=_number(), nargs="+", metavar="X", help="inputs")
    predict.add_argument("--x-col", help="input column: header name or 0-based index")
    predict.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    predict.set_defaults(run=_predict)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except UsageError as e:
        code, message = 2, str(e)
    except (DataFileError, CheckpointError, PlotUnavailable, biasfit.DivergedError,
            distributed.DistributedFitError, OSError) as e:
        code, message = 1, str(e).removeprefix("biasfit: ")
    if code != 0 and _reports():
        print(f"biasfit {args.command}: error: {message}", file=sys.stderr)
    if distributed.is_distributed():
        _leave_group(code)
    return code


def _reports() -> bool:
    # Under torchrun every rank meets the same error (they stop together), so
    # rank 0 alone says it.
    return not distributed.is_distributed() or dist.get_rank() == 0


def _leave_group(code):
    if code == 0:
        dist.barrier()  # gloo can abort a process that leaves while a peer still sends
        dist.destroy_process_group()
        return
    # After a failure a peer may be gone or mid-send, and tearing gloo down
    # can then abort: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
