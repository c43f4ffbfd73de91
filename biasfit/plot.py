"""A picture of a fit: the fitted curve with the data, and the loss per epoch.

matplotlib is an optional extra (pip install 'biasfit[plot]'); it is imported
only here, and only when a plot is asked for.
"""
import torch

INSTALL_HINT = "pip install 'biasfit[plot]' (or: pip install matplotlib)"
# Evenly spaced samples of the curve; the kinks and data points are added.
SAMPLES = 1001
# Up to this many points every marker and residual is drawn at full size; beyond
# it markers shrink and fade with N (about 1/sqrt(N)) so that 1e5 points read as
# a density, and the residuals (a line each) are left out: the curve, drawn on
# top, stays visible.
FEW_POINTS = 500


def marker_style(n: int) -> dict:
    """scatter()'s size and opacity for n points: the tutorial's 3 to a few
    hundred points as plain dots, more as ever smaller, fainter ones."""
    if n <= FEW_POINTS:
        return {"s": 36.0, "alpha": 1.0}
    scale = (FEW_POINTS / n) ** 0.5
    return {"s": max(36.0 * scale, 1.0), "alpha": max(scale, 0.05)}


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def require_matplotlib():
    """Fail early, before a fit, when plotting is impossible."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(f"plotting needs matplotlib: {INSTALL_HINT}") from None


def plot_formats() -> set:
    """The file name endings matplotlib can save to (png, pdf, svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase
    return set(FigureCanvasBase.get_supported_filetypes())


def curve_points(model, inputs) -> torch.Tensor:
    """Where to sample the fitted curve over the inputs' range: an even grid,
    every data x, and the hidden units' kinks (x = -b/w). The network is
    piecewise linear, so its peaks lie on kinks or data points: a curve
    through these reaches them exactly (1.92 at x = 0.5 for the tutorial)."""
    lo, hi = inputs.min().item(), inputs.max().item()
    w = model.weights().double().cpu().tolist()
    kinks = [-b / a for a, b in ((w[0], w[1]), (w[3], w[4])) if a != 0]
    extra = torch.tensor([k for k in kinks if lo <= k <= hi], dtype=torch.float64)
    grid = torch.cat([torch.linspace(lo, hi, SAMPLES, dtype=torch.float64),
                      inputs.detach().double().cpu(), extra])
    return torch.unique(grid).to(inputs.dtype)  # sorted, once each


def plot_fit(path, model, inputs, labels, result, names=("x", "y"),
             loss_name="total (summed) squared error") -> None:
    """Save a two-panel PNG (or any format matplotlib knows from `path`):
    `result` is the fit's FitResult, `names` the data's (x, y) column names,
    loss_name what its losses are."""
    figure(model, inputs, labels, result, names, loss_name).savefig(path, dpi=100)


def figure(model, inputs, labels, result, names=("x", "y"),
           loss_name="total (summed) squared error"):
    """plot_fit's matplotlib Figure."""
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no globals

    x = inputs.detach().double().cpu()
    y = labels.detach().double().cpu()
    grid = curve_points(model, inputs).to(inputs.device)
    with torch.no_grad():
        curve = model(grid).double().cpu()
        fitted = model(inputs).double().cpu()
    losses = result.losses
    state = {"converged": "converged", "plateau": "stopped at a plateau",
             "stalled": "stalled"}.get(result.stop_reason, "did not converge")

    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    # The curve on top of the data (zorder), the data under it.
    left.plot(grid.double().cpu(), curve, color="green", linewidth=2.5, label="fitted network",
              zorder=4)
    if len(x) <= FEW_POINTS:
        left.vlines(x, y, fitted, color="red", linestyle=":", label="residuals", zorder=2)
    left.scatter(x, y, color="black", zorder=3, linewidths=0, label="training data",
                 **marker_style(len(x)))
    left.set_xlabel(f"input ({names[0]})")
    left.set_ylabel(f"output ({names[1]})")
    # The same words as the text output's last line.
    left.set_title(f"{state} after {result.epochs_run} epochs: "
                   f"final_bias = {result.final_bias:.4f}")
    left.legend()

    # A line: a marker per epoch blots out thousands of epochs.
    right.semilogy(range(len(losses)), losses, marker="." if len(losses) <= 100 else None)
    right.set_xlabel("epoch")
    right.set_ylabel(loss_name)
    right.set_title(f"loss per epoch ({len(losses)} epochs evaluated)")
    right.grid(True, which="both", alpha=0.3)
    return fig
