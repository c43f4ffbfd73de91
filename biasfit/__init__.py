"""biasfit: the StatQuest tutorial network's training as a fused native kernel.

    >>> import biasfit
    >>> x, y = biasfit.tutorial_data()
    >>> model = biasfit.BasicNN()
    >>> result = biasfit.fit(model, x, y)          # torch.optim.SGD, lr=0.1
    >>> result.epochs_run, round(result.final_bias, 4)
    (34, -16.0019)
"""
from ._native import WITH_CUDA
from .data import tutorial_data
from .model import TUTORIAL_WEIGHTS, WEIGHT_NAMES, BasicNN
from .ops import fused_loss, predict
from .train import DivergedError, FitResult, StalledError, StalledWarning, fit, fit_fused

__version__ = "0.1.0"

__all__ = [
    "BasicNN", "DivergedError", "FitResult", "StalledError", "TUTORIAL_WEIGHTS", "WEIGHT_NAMES",
    "WITH_CUDA", "fit", "fit_fused", "fused_loss", "predict", "tutorial_data",
    "StalledWarning",
]
from .many import ManyResult, fit_many  # noqa: E402  (issue 28: many fits in one call)
__all__ += ["ManyResult", "fit_many"]
