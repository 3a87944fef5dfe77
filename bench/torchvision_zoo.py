"""torchvision's architectures as a user exports them: random weights, eval mode, PyTorch's
legacy exporter at opset 17, batch 1. Shared by the tests (small inputs) and the benchmarks (224).

torchvision's PyPI wheel is a CUDA build whose C ops fail to load next to PyTorch's CPU build, and
its package ``__init__`` registers those ops on import. The model definitions are pure Python, so
the package is entered without running its ``__init__`` (nothing here uses the C ops).
"""
from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from pathlib import Path

#: name -> the smallest square input it is tested at. AlexNet and VGG end in an adaptive pool to
#: 6x6 and 7x7 that PyTorch's exporter writes only when the feature map divides it: 224 there.
ARCHITECTURES = {
    "resnet18": 64, "resnext50_32x4d": 64, "mobilenet_v2": 64, "mobilenet_v3_small": 64,
    "efficientnet_b0": 64, "mnasnet0_5": 64, "regnet_y_400mf": 64, "shufflenet_v2_x1_0": 64,
    "squeezenet1_1": 64, "googlenet": 64, "inception_v3": 96, "densenet121": 64, "convnext_tiny": 64,
    "alexnet": 224, "vgg11_bn": 224,
}


def torchvision_models():
    """``torchvision.models``, or None when torchvision (or PyTorch) is not installed."""
    if "torchvision.models" in sys.modules:
        return sys.modules["torchvision.models"]
    if importlib.util.find_spec("torch") is None:
        return None
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "torchvision" not in sys.modules:
        package = types.ModuleType("torchvision")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["torchvision"] = package
    import torchvision.models

    return torchvision.models


def build(name: str, seed: int = 0):
    """The architecture with seeded random weights, in eval mode."""
    import torch

    models = torchvision_models()
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GoogLeNet/Inception warn about their default init
        net = getattr(models, name)()
    return net.eval()


def export(net, size: int, path: Path, *, batch: int = 1, opset: int = 17, seed: int = 1):
    """Export ``net`` at ``batch x 3 x size x size``; returns (input, PyTorch's output) as arrays."""
    import torch

    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = net(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["logits"])
    return x.numpy(), want.numpy()
