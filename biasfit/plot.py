"""A picture of a fit: the fitted curve with the data, and the loss per epoch.

matplotlib is an optional extra (pip install 'biasfit[plot]'); it is imported
only here, and only when a plot is asked for.
"""
import torch

INSTALL_HINT = "pip install 'biasfit[plot]' (or: pip install matplotlib)"


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def require_matplotlib():
    """Fail early, before a fit, when plotting is impossible."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(f"plotting needs matplotlib: {INSTALL_HINT}") from None


def plot_fit(path, model, inputs, labels, losses, title=None) -> None:
    """Save a two-panel PNG (or any format matplotlib knows from `path`)."""
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no globals

    x = inputs.detach().double().cpu()
    y = labels.detach().double().cpu()
    with torch.no_grad():
        grid = torch.linspace(x.min().item(), x.max().item(), 201,
                              dtype=inputs.dtype, device=inputs.device)
        curve = model(grid).double().cpu()
        fitted = model(inputs).double().cpu()

    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(grid.double().cpu(), curve, color="green", linewidth=2.5, label="fitted network")
    left.vlines(x, y, fitted, color="red", linestyle=":", label="residuals")
    left.scatter(x, y, color="black", zorder=3, label="training data")
    left.set_xlabel("input (dose)")
    left.set_ylabel("output (effectiveness)")
    left.set_title(title or f"final_bias = {model.final_bias.item():.4f}")
    left.legend()

    right.semilogy(range(len(losses)), losses, marker=".")
    right.set_xlabel("epoch")
    right.set_ylabel("total squared error")
    right.set_title(f"loss per epoch ({len(losses)} epochs)")
    right.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=100)
