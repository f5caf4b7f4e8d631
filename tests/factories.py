"""A user's model factory, as `arch = "tests.factories:tiny_cnn"` names it in specs."""

from torch import nn


def tiny_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 8) -> nn.Module:
    """A plain torch network (no robustlab base class): conv-BN-ReLU twice, pooled, linear."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
