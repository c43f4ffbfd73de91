"""What a fit returns, and the errors that end one early."""
import math
from dataclasses import dataclass, field


# Why a fit ended where it did (FitResult.stop_reason).
STOP_REASONS = ("converged", "plateau", "stalled", "max_epochs")


@dataclass
class FitResult:
    """What a fit did: `epochs_run` is the epoch index it stopped at (the
    tutorial's "Num steps", 34) or `epochs` if it never converged; `losses`
    holds every epoch's loss in order (summed, or the mean with
    reduction="mean").

    stop_reason: "converged" (the loss fell below tol), "plateau" (it
    improved by less than rtol for patience epochs), "stalled" (every output
    unit turned off at epoch stall_epoch: from there the loss cannot change;
    the fit ran on, as torch.optim does, unless on_stall stopped it there),
    or "max_epochs"."""
    epochs_run: int
    final_bias: float
    losses: list = field(default_factory=list)
    converged: bool = False
    # The final value of every parameter the fit trained, by name (w00, ...,
    # final_bias); empty for a fit of final_bias alone by fit_fused.
    params: dict = field(default_factory=dict)
    stop_reason: str = "max_epochs"
    stall_epoch: int | None = None

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan


class DivergedError(FloatingPointError):
    """The loss or the bias became inf or NaN during a fit."""

    def __init__(self, epoch: int, what: str, value: float):
        self.epoch = epoch
        super().__init__(
            f"biasfit: {what} became {value} at epoch {epoch}; lower lr, or check "
            f"the data for inf/NaN")


def mark_stalled(result, epoch, bias, n_points=None):
    """result, marked as stalled at `epoch`, whose step reached `bias` (every
    unit off: what stall.settle's warning names, kept off the fields, with
    the points counted over every rank where a sharded fit knows them)."""
    result.stop_reason, result.stall_epoch = "stalled", epoch
    result._stall_bias, result._stall_points = bias, n_points
    return result


def stall_message(epoch, final_bias, n_points, lr, reduction="sum",
                  mean_option='reduction="mean"') -> str:
    """What happened at a stall and what to do: the text of StalledError and
    StalledWarning (the command line names its own option for the mean)."""
    text = (f"the fit stalled at epoch {epoch}: final_bias = {final_bias:.6g} turns every "
            f"output unit off (hidden + final_bias <= 0 at all {n_points} points), so the "
            f"gradient is exactly 0 from there on and the loss cannot change. ")
    if reduction == "mean":
        return text + "Lower lr."
    return text + (f"The loss is summed over the points, so its gradient grows with N: "
                   f"lower lr, e.g. scaled by 1/N (lr/N = {lr / n_points:.3g}), or "
                   f"fit the mean loss ({mean_option})")


class StalledError(RuntimeError):
    """The fit reached a final_bias where every output unit is off: the
    gradient is 0 and no later epoch can change the loss (biasfit/stall.py);
    raised with on_stall="raise" only. `result` is the fit up to that epoch."""

    def __init__(self, result: FitResult, n_points: int, lr: float, reduction="sum"):
        self.result = result
        self.epoch = result.epochs_run
        self.n_points, self.lr, self.reduction = n_points, lr, reduction
        super().__init__("biasfit: " + self.describe())

    def describe(self, mean_option='reduction="mean"') -> str:
        return stall_message(self.epoch, self.result.final_bias, self.n_points, self.lr,
                             self.reduction, mean_option)


class StalledWarning(RuntimeWarning):
    """A fit stalled (see StalledError) and, as torch.optim would, ran on
    (on_stall="warn", the default) or stopped there (on_stall="stop"): the
    result's stop_reason is "stalled", its stall_epoch the epoch."""
