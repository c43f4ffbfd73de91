"""The `biasfit` command line: fit final_bias to data, and predict with a saved model.

  biasfit train [--data FILE] [--lr ...] [--json] [--plot FIG.png] [--save MODEL]
  biasfit predict --model MODEL (--data FILE | --x X [X ...])

Every error ends the command with one line on stderr and a non-zero exit:
2 for a bad option, 1 for bad data, a failed fit or an unwritable output;
Ctrl-C exits 130 and a closed output pipe (| head) 141, quietly, as Unix
tools do.
"""
import argparse
import csv
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

import biasfit
from . import distributed
from .checkpoint import CheckpointError, load_model, save_model
from .datafile import DataFileError, load_table, load_xy
from .plot import PlotUnavailable, plot_fit, plot_formats, require_matplotlib
from .train import ENGINES, MAX_EPOCHS, REDUCTIONS, StalledError

# A progress bar appears once a fit has run this long (and stderr is a terminal).
PROGRESS_DELAY_S = 1.0
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class UsageError(Exception):
    """An option value that the parser alone cannot judge (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Typed(float):
    """A number that keeps the text it was typed as (predict --x)."""

    def __new__(cls, value, text):
        number = super().__new__(cls, value)
        number.text = text
        return number


def _as_typed(text):
    return _Typed(_number()(text), text.strip())


def _number(minimum=None, integer=False, maximum=None, why=""):
    """An argparse type: a finite float (or int: 1e6 counts) in [minimum, maximum]."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if integer and value is not None and math.isfinite(value):
            value = int(text) if text.strip().lstrip("+-").isdigit() else (
                int(value) if value.is_integer() else None)
        if value is None:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}{why}, got {text}")
        return value
    return parse


def _device(name) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available on this machine")
    if name == "cuda" and not biasfit.WITH_CUDA:
        raise UsageError("--device cuda: this biasfit was built without CUDA support")
    return torch.device(name)


def _check_output(path, option):
    if not path:
        raise UsageError(f"{option}: name a file (got an empty name)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a folder: name a file in it")


def _check_columns_need_data(args, options):
    for option in options:
        if getattr(args, option) is not None and args.data is None:
            name = "--" + option.replace("_", "-")
            raise UsageError(f"{name} chooses a column of --data: give --data FILE too")


def _check_replaceable(path):
    """--save replaces a model it wrote before, or an empty file; anything
    else there (the data, say) is the user's and stays."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    try:
        load_model(path)
    except CheckpointError:
        raise UsageError(f"--save {path} exists and is not a biasfit model file: "
                         f"name a new file (or remove it first)") from None


def _progress(total, stream=None, shown=True):
    stream = stream or sys.stderr
    return tqdm(total=total, unit="epoch", delay=PROGRESS_DELAY_S, leave=False,
                file=stream, disable=not (shown and stream.isatty()))


class Progress:
    """The progress bar: epochs done, and the last epoch's loss and bias.
    show(epoch, loss, bias) moves it to an epoch (the autograd engine's
    callback every epoch; the fused engine's live reports about every 0.1
    s, then its callback's replay)."""

    def __init__(self, bar):
        self.bar, self.last = bar, time_now()

    def show(self, epoch, loss, bias):
        if self.bar.disable:
            return
        self.bar.update(epoch + 1 - self.bar.n)
        if epoch + 1 == self.bar.total or time_now() - self.last > 0.1:
            self.last = time_now()
            self.bar.set_postfix_str(f"loss {loss:.6g}  bias {bias:.6g}", refresh=False)


def time_now():
    return time.monotonic()


def _settings(args, n_points) -> dict:
    names = ("data", "x_col", "y_col", "lr", "epochs", "tol", "reduction", "rtol",
             "patience", "momentum", "nesterov", "weight_decay", "engine", "device",
             "dtype", "init_bias")
    return {"points": n_points, **{name: getattr(args, name) for name in names}}


def _record(result, settings, error=None) -> dict:
    """What --json prints and --save stores beside the parameters; error:
    the message of a fit that failed (--json prints it with the fit so far)."""
    record = {}
    if error is not None:
        record["error"] = error
    if result is not None:
        final_loss = result.final_loss if math.isfinite(result.final_loss) else None
        record["result"] = {"epochs_run": result.epochs_run,
                            "final_bias": _finite(result.final_bias),
                            "final_loss": final_loss, "converged": result.converged,
                            "stop_reason": result.stop_reason,
                            "stall_epoch": result.stall_epoch}
        record["losses"] = [_finite(v) for v in result.losses]
    if settings is not None:
        record["settings"] = settings
    record["versions"] = {"biasfit": biasfit.__version__, "torch": torch.__version__}
    return record


def _finite(value):
    return value if math.isfinite(value) else None  # JSON has no inf or NaN


def _outcome(result, args) -> str:
    """The result line."""
    loss = "mean_loss" if args.reduction == "mean" else "total_loss"
    epochs = f"{result.epochs_run} epoch" + ("" if result.epochs_run == 1 else "s")
    if result.stop_reason == "plateau":
        state = (f"stopped at a plateau after {epochs} (the loss improved by less than "
                 f"{args.rtol:g} relative for {args.patience} epochs)")
    elif result.converged:
        state = f"converged after {epochs}"
    else:
        state = f"did not converge after {epochs}"
    return (f"{state}: final_bias = {result.final_bias:.4f}, "
            f"{loss} = {result.final_loss:.3g}")


def _train(args) -> int:
    device, dtype = _device(args.device), DTYPES[args.dtype]
    if args.nesterov and args.momentum <= 0:
        raise UsageError("--nesterov needs --momentum > 0")
    _check_columns_need_data(args, ("x_col", "y_col"))
    # The model and torch.optim.SGD hold these in the data's dtype: a value
    # past its largest would be inf (or fail inside torch's step).
    largest = torch.finfo(dtype).max
    for option in ("lr", "momentum", "weight_decay", "init_bias"):
        value = getattr(args, option)
        if abs(value) > largest:
            raise UsageError(f"--{option.replace('_', '-')} {value:g} is too large for "
                             f"{args.dtype} (at most {largest:.4g} in magnitude)")
    if args.plot is not None:
        require_matplotlib()
        _check_output(args.plot, "--plot")
        # matplotlib picks the format from the ending (and adds .png to a
        # name without one): refuse one it cannot write before the fit.
        ending = os.path.splitext(args.plot)[1].lstrip(".").lower()
        formats = plot_formats()
        if ending not in formats:
            raise UsageError(f"--plot {args.plot}: name a file ending in one of "
                             + ", ".join("." + f for f in sorted(formats)))
    if args.save is not None:
        _check_output(args.save, "--save")
        _check_replaceable(args.save)
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
            inputs, labels, names = load_xy(args.data, args.x_col, args.y_col, dtype=dtype,
                                            with_names=True, options=("--x-col", "--y-col"),
                                            **shard)
        else:
            names = ("dose", "effectiveness")  # the tutorial's
            inputs, labels = biasfit.tutorial_data()
            rows = distributed.shard_rows(len(inputs), rank, world)
            inputs, labels = inputs[rows].to(dtype), labels[rows].to(dtype)
    inputs, labels = inputs.to(device), labels.to(device)

    model = biasfit.BasicNN(args.init_bias, dtype=dtype).to(device)
    every = args.log_every
    label = "mean_loss" if args.reduction == "mean" else "total_loss"
    with _progress(args.epochs, shown=rank == 0) as bar:
        progress = Progress(bar)

        def show(epoch, loss, bias):
            progress.show(epoch, loss, bias)
            last = epoch + 1 == args.epochs or loss < args.tol
            if (not (args.json or args.quiet) and rank == 0
                    and (epoch % every == 0 or last)):
                tqdm.write(f"epoch {epoch:4d}  {label} {loss:.6g}  final_bias {bias:.6g}",
                           file=sys.stdout)
        try:
            result = _fit(args, model, inputs, labels, show, progress)
        except StalledError as e:
            raise FitFailed(e.describe(mean_option="--reduction mean"), e.result) from None
        except biasfit.DivergedError as e:
            raise FitFailed(str(e).removeprefix("biasfit: "), None) from None

    points = torch.tensor(len(inputs), device=device)
    if sharded:
        dist.all_reduce(points)
    if rank != 0:
        return 0
    record = _record(result, _settings(args, int(points)))
    if args.json:
        print(json.dumps(record, allow_nan=False))
    elif not result.losses:
        print(f"ran no epochs (--epochs 0): final_bias = {result.final_bias:.4f}, "
              f"the starting value; no loss was computed")
    else:
        print(_outcome(result, args))
    if args.save:
        save_model(args.save, model, record)
        _note(args, f"saved the model to {args.save}")
    if args.plot:
        plot_fit(args.plot, model, inputs, labels, result, names=names,
                 loss_name="mean squared error" if args.reduction == "mean"
                 else "total (summed) squared error")
        _note(args, f"saved the plot to {args.plot}")
    return 0


class FitFailed(Exception):
    """The fit diverged or stalled (exit 1): the message, and the fit up to
    there where one is known (--json prints both)."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


def _fit(args, model, inputs, labels, callback, progress):
    sgd = {"lr": args.lr, "momentum": args.momentum, "nesterov": args.nesterov,
           "weight_decay": args.weight_decay}
    # A stall is an error here (exit 1, with the advice): the fit stops at it.
    stop = {"reduction": args.reduction, "rtol": args.rtol, "patience": args.patience,
            "on_stall": "raise"}
    if args.engine == "fused":
        # fit_fused directly: a torch.optim.SGD would import torch._dynamo
        # (about a second) for a loop that runs in native code.
        with live_progress(progress):
            result = biasfit.fit_fused(inputs, labels, weights=model.weights(),
                                       bias=model.final_bias.detach(), epochs=args.epochs,
                                       tol=args.tol, callback=callback, **sgd, **stop)
        with torch.no_grad():
            model.final_bias.fill_(result.final_bias)
        return result
    optimizer = torch.optim.SGD(model.parameters(), **sgd)
    return biasfit.fit(model, inputs, labels, optimizer=optimizer, epochs=args.epochs,
                       tol=args.tol, callback=callback, engine=args.engine, **stop)


def live_progress(progress):
    """The fused engine's live reports to the progress bar, where the native
    trainer gives them (engine.reporting); else nothing."""
    from .engine import reporting
    return reporting(None if progress.bar.disable else progress.show)


def _note(args, text):
    if not args.json:  # --json's stdout holds the JSON object only
        print(text)


def _predict(args) -> int:
    device = _device(args.device)
    _check_columns_need_data(args, ("x_col",))
    model, _ = load_model(args.model, device)
    dtype = model.final_bias.dtype
    if args.data:
        inputs, names, columns = load_table(args.data, args.x_col, dtype=dtype,
                                            option="--x-col")
        where = lambda i: f"{args.data} row {i + 1} (x = {inputs[i].item():g})"  # noqa: E731
    else:
        inputs = torch.tensor(args.x, dtype=dtype)
        names, columns = ["x"], [[x.text for x in args.x]]  # as typed
        where = lambda i: f"--x {args.x[i]:g}"  # noqa: E731
    kind = str(dtype).removeprefix("torch.")
    refuse = UsageError if args.data is None else DataFileError  # exit 2 or 1
    too_big = (~torch.isfinite(inputs)).nonzero()
    if len(too_big):  # --x 1e39 is inf in float32
        raise refuse(f"{where(int(too_big[0]))} does not fit the model's dtype {kind}")
    with torch.no_grad():
        outputs = model(inputs.to(device)).cpu()
    bad = (~torch.isfinite(outputs)).nonzero()
    if len(bad):
        raise refuse(f"{where(int(bad[0]))}: the model's output is not a finite {kind} "
                         f"number (the weights times x overflow); use inputs of smaller "
                         f"magnitude")
    # Every column as it was read, then the prediction in the model's dtype's
    # shortest text that reads back to the same value.
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([*names, "prediction"])
    writer.writerows(zip(*columns, (str(y) for y in outputs.numpy())))
    return 0


EXAMPLES = """examples:
  biasfit train                                   the tutorial's fit, every epoch shown
  biasfit train --data doses.csv --x-col dose --y-col effect --reduction mean --rtol 1e-6
  biasfit train --data points.npy --quiet --save model.pt
  cat points.csv | biasfit train --data - --log-every 100
  biasfit predict --model model.pt --x 0 0.5 1
"""

TRAIN_EXAMPLES = """The loss is by default the SUM of squared errors over the N points (the
tutorial's): its gradient grows with N, so an lr that suits 3 points overshoots
on thousands. Scale lr by 1/N (e.g. --lr 0.0005 for 200 points), or fit the
mean (--reduction mean), where the tutorial's lr 0.1 suits any N. A step so
large that every output unit turns off leaves a gradient of exactly 0: the fit
stops there and says so (exit 1). Noisy data's loss never falls below a small
--tol: --rtol 1e-6 stops once it no longer improves.

examples:
  biasfit train
  biasfit train --data examples/doses.csv --reduction mean --rtol 1e-6 --epochs 1000
  biasfit train --data big.csv.gz --reduction mean --rtol 1e-6 --epochs 100000 --quiet
  biasfit train --data points.parquet --x-col dose --y-col response --save model.pt
  biasfit train --data - --json < points.csv
"""


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="biasfit", description=__doc__.split("\n")[0], epilog=EXAMPLES,
                     formatter_class=raw)
    parser.add_argument("--version", action="version",
                        version=f"biasfit {biasfit.__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fit final_bias (default: the tutorial data)",
                           description="Fit final_bias by SGD on the summed squared error.",
                           epilog=TRAIN_EXAMPLES, formatter_class=raw)
    train.add_argument("--data", metavar="FILE",
                       help="CSV/text (header optional), .npy of shape (N, 2), or .npz with "
                            "x, y; - reads standard input (default: the tutorial's 3 points)")
    train.add_argument("--x-col", help="input column: header name or 0-based index")
    train.add_argument("--y-col", help="label column: header name or 0-based index")
    train.add_argument("--lr", type=_number(0), default=0.1,
                       help="learning rate (0.1); with the summed loss scale it by 1/N, "
                            "or use --reduction mean")
    train.add_argument("--epochs", type=_number(0, integer=True, maximum=MAX_EPOCHS,
                                                why=" (2**31 - 1)"),
                       default=100, help="most epochs to run (100)")
    train.add_argument("--tol", type=_number(0), default=1e-4,
                       help="stop once the loss is below this (1e-4)")
    train.add_argument("--reduction", choices=REDUCTIONS, default="sum",
                       help="sum (the tutorial's: scale lr by 1/N) or mean of the squared "
                            "errors (sum)")
    train.add_argument("--rtol", type=_number(0, maximum=0.999999), default=0.0,
                       help="also stop once the loss improves by less than this, relative "
                            "to its lowest, for --patience epochs: noisy data's loss has a "
                            "floor far above any --tol (0: off)")
    train.add_argument("--patience", type=_number(1, integer=True), default=10,
                       help="epochs without an --rtol improvement before stopping (10)")
    train.add_argument("--momentum", type=_number(0), default=0.0, help="SGD momentum (0)")
    train.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    train.add_argument("--weight-decay", type=_number(0), default=0.0, help="L2 penalty (0)")
    train.add_argument("--engine", choices=ENGINES, default="fused",
                       help="fused (the default): the whole fit in one native call; "
                            "autograd: torch.optim.SGD, one step per Python iteration, the "
                            "same results within docs/numerics.md's bounds, slower")
    train.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="where the data and the fit live (cpu); cuda needs a GPU and "
                            "biasfit built with CUDA")
    train.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                       help="precision of the data, model and loss terms (float32); sums "
                            "run in float64 either way")
    train.add_argument("--init-bias", type=_number(), default=0.0,
                       help="starting final_bias (0)")
    shown = train.add_mutually_exclusive_group()
    shown.add_argument("--quiet", "-q", action="store_true",
                       help="print only the result, not every epoch")
    shown.add_argument("--log-every", type=_number(1, integer=True), default=1, metavar="K",
                       help="print every K-th epoch (and the last) (1)")
    train.add_argument("--json", action="store_true",
                       help="print one JSON object (result, losses, settings, versions)")
    train.add_argument("--plot", metavar="FILE.png",
                       help="save the fitted curve and the loss per epoch (needs matplotlib)")
    train.add_argument("--save", metavar="FILE", help="save the trained model and its history")
    train.set_defaults(run=_train)

    predict = sub.add_parser("predict", help="predict with a model saved by train --save",
                             epilog="example:\n  biasfit predict --model model.pt --x 0 0.5 1",
                             formatter_class=raw)
    predict.add_argument("--model", metavar="FILE", required=True,
                         help="a model file written by biasfit train --save")
    given = predict.add_mutually_exclusive_group(required=True)
    given.add_argument("--data", metavar="FILE",
                       help="inputs from a data file (- reads standard input): the output "
                            "repeats its every column as read, then the prediction")
    given.add_argument("--x", type=_as_typed, nargs="+", metavar="X", help="inputs")
    predict.add_argument("--x-col", help="input column: header name or 0-based index")
    predict.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                         help="where to run the model (cpu)")
    predict.set_defaults(run=_predict)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        return _interrupted("biasfit")
    except SystemExit as e:
        # --json's reader gets one JSON object for a bad option too
        # (argparse has printed its line on stderr).
        if e.code not in (0, None) and "--json" in argv:
            print(json.dumps(_record(None, None, error=_PARSE_ERROR)))
        raise
    failure = None
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except KeyboardInterrupt:
        return _interrupted(f"biasfit {args.command}")
    except BrokenPipeError:
        return _pipe_closed()
    except UsageError as e:
        code, message = 2, str(e)
    except (DataFileError, CheckpointError, PlotUnavailable, FitFailed,
            distributed.DistributedFitError, OSError) as e:
        code, message, failure = 1, str(e).removeprefix("biasfit: "), e
    if code != 0 and _reports():
        print(f"biasfit {args.command}: error: {message}", file=sys.stderr)
        if getattr(args, "json", False):  # one JSON object, also on failure
            print(json.dumps(_record(getattr(failure, "result", None), None,
                                     error=message), allow_nan=False))
            sys.stdout.flush()
    if distributed.is_distributed():
        _leave_group(code)
    return code


_PARSE_ERROR = "bad command line (see stderr and biasfit train --help)"


def _interrupted(prog) -> int:
    # Ctrl-C: one line, and the shell's 128 + SIGINT, as Unix tools do.
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130


def _pipe_closed() -> int:
    # The reader (| head) is gone: nothing more can be said on stdout, and
    # Python must not complain while flushing it at exit.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a Unix tool killed by it reports


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


# issue 28: `train --group-col` (one fit per group, fit_many) and its options,
# in biasfit/cli_groups.py; this hook adds them to train's parser.
from . import cli_groups  # noqa: E402
build_parser = cli_groups.with_group_options(build_parser)
