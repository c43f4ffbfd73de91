"""What a fit returns, and the errors that end one early."""
import math
from dataclasses import dataclass, field


@dataclass
class FitResult:
    """What a fit did: `epochs_run` is the epoch index it stopped at (the
    tutorial's "Num steps", 34) or `epochs` if it never converged; `losses`
    holds every epoch's total loss in order."""
    epochs_run: int
    final_bias: float
    losses: list = field(default_factory=list)
    converged: bool = False
    # The final value of every parameter the fit trained, by name (w00, ...,
    # final_bias); empty for a fit of final_bias alone by fit_fused.
    params: dict = field(default_factory=dict)

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


class StalledError(RuntimeError):
    """The fit reached a final_bias where every output unit is off: the
    gradient is 0 and no later epoch can change anything (biasfit/stall.py).
    `result` is the fit up to that epoch."""

    def __init__(self, result: FitResult, n_points: int, lr: float):
        self.result = result
        self.epoch = result.epochs_run
        super().__init__(
            f"biasfit: the fit stalled at epoch {self.epoch}: final_bias = "
            f"{result.final_bias:.6g} turns every output unit off (hidden + final_bias "
            f"<= 0 at all {n_points} points), so the gradient is exactly 0 and no later "
            f"step can change it. The loss is summed over the points, so its gradient "
            f"grows with N: lower lr, e.g. scaled by 1/N (lr/N = {lr / n_points:.3g})")
