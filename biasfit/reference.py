"""Pure-PyTorch reference: the tutorial's module and loop, written plainly.

Tests and benchmarks measure the native kernels against these. Nothing here
calls biasfit's extension.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .model import TUTORIAL_WEIGHTS, WEIGHT_NAMES


class TutorialNN(nn.Module):
    """The tutorial's BasicNN_train, line for line."""

    def __init__(self, final_bias: float = 0.0, weights=TUTORIAL_WEIGHTS, dtype=torch.float32):
        super().__init__()
        # Built in `dtype` directly: float64 weights must be 1.7, not float32's 1.7.
        for name, value in zip(WEIGHT_NAMES, weights):
            setattr(self, name, nn.Parameter(torch.tensor(float(value), dtype=dtype),
                                             requires_grad=False))
        self.final_bias = nn.Parameter(torch.tensor(float(final_bias), dtype=dtype),
                                       requires_grad=True)

    def forward(self, input):
        input_to_top_relu = input * self.w00 + self.b00
        top_relu_output = F.relu(input_to_top_relu)
        scaled_top_relu_output = top_relu_output * self.w01

        input_to_bottom_relu = input * self.w10 + self.b10
        bottom_relu_output = F.relu(input_to_bottom_relu)
        scaled_bottom_relu_output = bottom_relu_output * self.w11

        input_to_final_relu = scaled_top_relu_output + scaled_bottom_relu_output + self.final_bias
        return F.relu(input_to_final_relu)


def tutorial_fit(model, inputs, labels, optimizer, epochs=100, tol=1e-4):
    """The tutorial's loop: per-sample forward and backward, one step an epoch.

    Returns (epochs_run, final_bias, losses) with the same meaning as
    biasfit.fit's result.
    """
    losses = []
    for epoch in range(epochs):
        total_loss = 0
        for iteration in range(len(inputs)):
            input_i = inputs[iteration]
            label_i = labels[iteration]
            output_i = model(input_i)
            loss = (output_i - label_i) ** 2
            loss.backward()
            total_loss += float(loss.detach())
        losses.append(total_loss)
        if total_loss < tol:
            return epoch, model.final_bias.item(), losses
        optimizer.step()
        optimizer.zero_grad()
    return epochs, model.final_bias.item(), losses


def vectorized_loss(model, inputs, labels):
    """The same loss with whole-tensor ops: eager PyTorch at its most direct."""
    return ((model(inputs) - labels) ** 2).sum()


def vectorized_fit(model, inputs, labels, optimizer, epochs=100, tol=1e-4, loss_fn=None):
    """The tutorial's loop over whole tensors: one forward/backward an epoch.

    `loss_fn` (default vectorized_loss) lets benchmarks pass a compiled one.
    """
    loss_fn = loss_fn or vectorized_loss
    losses = []
    for epoch in range(epochs):
        optimizer.zero_grad()
        loss = loss_fn(model, inputs, labels)
        loss.backward()
        value = loss.item()
        losses.append(value)
        if value < tol:
            return epoch, model.final_bias.item(), losses
        optimizer.step()
    return epochs, model.final_bias.item(), losses


def loss_and_grad(inputs, labels, weights, bias):
    """Loss and d(loss)/d(bias) by eager autograd, for checking fused_loss."""
    model = TutorialNN(float(bias), weights.tolist(), dtype=inputs.dtype)
    loss = vectorized_loss(model, inputs, labels)
    loss.backward()
    return loss.detach(), model.final_bias.grad.detach()
