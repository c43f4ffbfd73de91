"""The tutorial's training data."""
import torch


def tutorial_data():
    """Doses [0, 0.5, 1] and their effectiveness labels [0, 1, 0], float32."""
    inputs = torch.tensor([0.0, 0.5, 1.0])
    labels = torch.tensor([0.0, 1.0, 0.0])
    return inputs, labels
