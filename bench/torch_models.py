"""The zoo's lenet5, vgg-small and resnet8 written as ordinary ``torch.nn`` modules: the PyTorch
peer of the training benchmarks.

Written layer by layer as a PyTorch user would (``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.MaxPool2d``,
``nn.Linear``), not derived from the edgecnn graph, so PyTorch runs its own eager kernels
(oneDNN convolutions) exactly as in a user's script. :func:`from_graph` copies an edgecnn graph's
weights in by name with ``load_state_dict(strict=True)``: a parameter that does not match in name
or shape is an error, never silently left at its random initial value.

ONNX's BatchNormalization ``momentum`` weighs the running statistic (0.9); PyTorch's weighs the
batch (0.1): :func:`from_graph` converts.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.logits = nn.Linear(84, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.logits(torch.relu(self.fc2(x)))


class _VGGBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x):
        return nn.functional.max_pool2d(torch.relu(self.conv2(torch.relu(self.conv1(x)))), 2)


class VGGSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1, self.block2, self.block3 = _VGGBlock(3, 32), _VGGBlock(32, 64), _VGGBlock(64, 128)
        self.fc1 = nn.Linear(2048, 128)
        self.logits = nn.Linear(128, 10)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(x)))
        return self.logits(torch.relu(self.fc1(torch.flatten(x, 1))))


class _ConvBN(nn.Module):
    def __init__(self, cin, cout, kernel, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class _Stage(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = _ConvBN(cin, cout, 3, stride)
        self.b = _ConvBN(cout, cout, 3, 1)
        self.proj = _ConvBN(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return torch.relu(y + (x if self.proj is None else self.proj(x)))


class ResNet8(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _ConvBN(3, 16, 3, 1)
        self.stage1, self.stage2, self.stage3 = _Stage(16, 16, 1), _Stage(16, 32, 2), _Stage(32, 64, 2)
        self.logits = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(torch.relu(self.stem(x)))))
        return self.logits(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


MODULES = {"lenet5": LeNet5, "vgg-small": VGGSmall, "resnet8": ResNet8}


def from_graph(name: str, graph) -> nn.Module:
    """The ``torch.nn`` module for zoo model ``name`` holding ``graph``'s weights (strictly matched)."""
    module = MODULES[name]()
    state = {}
    for key, value in graph.params.items():
        state[key.replace(".bn.scale", ".bn.weight")] = torch.from_numpy(np.array(value, dtype=np.float32))
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm2d):
            state.setdefault(_name_of(module, sub) + ".num_batches_tracked", torch.tensor(0))
    module.load_state_dict(state, strict=True)
    for node in graph.nodes:
        if node.op_type == "BatchNormalization":
            bn = module.get_submodule(node.name)
            bn.momentum, bn.eps = 1.0 - node.attrs["momentum"], node.attrs["epsilon"]
    return module


def _name_of(root: nn.Module, target: nn.Module) -> str:
    return next(name for name, sub in root.named_modules() if sub is target)
