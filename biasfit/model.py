"""The tutorial's network as an nn.Module backed by the native kernels."""
import torch
from torch import nn

from . import ops

# The tutorial's frozen weights, in the order of the native ops' `weights`,
# and the seven parameters in core/network.h's order (fit_params's `params`):
# the one definition of these names, imported everywhere else.
WEIGHT_NAMES = ("w00", "b00", "w01", "w10", "b10", "w11")
PARAM_NAMES = WEIGHT_NAMES + ("final_bias",)
TUTORIAL_WEIGHTS = (1.7, -0.85, -40.8, 12.6, 0.0, 2.7)


class BasicNN(nn.Module):
    """relu(w01 relu(w00 x + b00) + w11 relu(w10 x + b10) + final_bias).

    As in the tutorial, the six weights start frozen at its values and
    final_bias (0.0 by default) is the one trainable parameter; any of the
    seven trains once it requires grad (`model.w00.requires_grad_(True)`).
    `model(x)` runs the native predict kernel; `model.loss(x, y)` the fused
    loss-and-gradient kernel, which computes in its one pass the gradient of
    every parameter that requires grad.
    """

    def __init__(self, final_bias: float = 0.0, dtype=None):
        super().__init__()
        # Built in `dtype` directly (default float32): BasicNN(dtype=torch.float64)
        # holds 1.7 itself, where BasicNN().double() holds float32's 1.7 widened.
        dtype = dtype or torch.get_default_dtype()
        for name, value in zip(WEIGHT_NAMES, TUTORIAL_WEIGHTS):
            setattr(self, name, nn.Parameter(torch.tensor(value, dtype=dtype), requires_grad=False))
        self.final_bias = nn.Parameter(torch.tensor(float(final_bias), dtype=dtype),
                                       requires_grad=True)

    def weights(self) -> torch.Tensor:
        """The six weights' values as one tensor (w00, b00, w01, w10, b10, w11),
        detached."""
        return torch.stack([getattr(self, name).detach() for name in WEIGHT_NAMES])

    def trainable_names(self) -> tuple:
        """The names of the parameters that require grad, in the native ops'
        order (w00, b00, w01, w10, b10, w11, final_bias)."""
        params = self._parameters  # not getattr: see _live_weights
        return tuple([n for n in PARAM_NAMES if params[n].requires_grad])

    def _live_weights(self) -> torch.Tensor:
        # Stacked without detaching, so the weights that require grad get
        # their gradients through the stack; frozen ones stay out of the graph.
        # Read from _parameters, not getattr: nn.Module's __getattr__ would
        # add microseconds to every epoch of the tutorial's 3-point fit.
        # Under torch.func and forward-mode AD they stay live too: there the
        # transform decides what is differentiated (a dual weight need not
        # require grad, and under torch.compile a transform's tensors may
        # read requires_grad=False).
        params = self._parameters
        live = [params[n] for n in WEIGHT_NAMES]
        if any(p.requires_grad for p in live) or ops.under_transform():
            return torch.stack(live)
        return torch.stack([p.detach() for p in live])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return ops.predict(inputs, self._live_weights(), self.final_bias)

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """sum((model(inputs) - labels)^2), 0-d, differentiable in every
        parameter that requires grad."""
        return ops.fused_loss(inputs, labels, self._live_weights(), self.final_bias)

    def __prepare_scriptable__(self):
        # torch.jit.script(BasicNN()) scripts this twin: the same Parameter
        # objects, calling the registered ops, which TorchScript knows.
        return ScriptableBasicNN(self)


class ScriptableBasicNN(nn.Module):
    """BasicNN as TorchScript takes it: what torch.jit.script(BasicNN())
    returns, sharing the model's parameters. Its forward and loss run the
    same native ops, with their autograd, in float32 or float64."""

    def __init__(self, model: BasicNN):
        super().__init__()
        for name in PARAM_NAMES:
            setattr(self, name, getattr(model, name))

    def _weights(self) -> torch.Tensor:
        return torch.stack([self.w00, self.b00, self.w01, self.w10, self.b10, self.w11])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.ops.biasfit.predict(inputs, self._weights(), self.final_bias)

    @torch.jit.export
    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.ops.biasfit.fused_loss(inputs, labels, self._weights(),
                                            self.final_bias)[0]
