"""Named reference architectures, built with the layers API.

Every model takes one float32 NCHW input named ``input`` with a symbolic batch ``"N"`` and
returns logits (no Softmax) from a last Dense layer named ``logits``. Weights are seeded
(He-normal through the builder), so ``build(name, seed)`` is reproducible.

========================  ===========  =============================================================
name                      input        architecture
========================  ===========  =============================================================
``digits-cnn``            1 x 8 x 8    conv3x3(16, same) · conv3x3(32, same) · maxpool2 · conv3x3(64)
                                       · flatten · dense(10); about 26k parameters
``lenet5``                1 x 28 x 28  LeNet-5 with ReLU and max pooling: conv5x5(6, pad 2) · pool ·
                                       conv5x5(16) · pool · dense 120 · 84 · 10
``vgg-small``             3 x 32 x 32  three VGG blocks of two conv3x3 (32, 64, 128) + maxpool,
                                       dense 128, dense 10
``resnet8``               3 x 32 x 32  stem conv3x3(16)+BN+ReLU, three residual stages 16/32/64 (the
                                       last two downsample by 2 with 1x1 projection shortcuts),
                                       global average pool, dense 10
``mobilenet-tiny``        3 x 96 x 96  stem conv3x3/2 (16) + BN + ReLU6, six depthwise-separable
                                       blocks (three downsample), global average pool, dense 10
========================  ===========  =============================================================
"""
from __future__ import annotations

from edgecnn.runtime.errors import InputError

from .ir import Graph
from .layers import (Add, BatchNorm2d, Conv2d, Dense, DepthwiseConv2d, Flatten, GlobalAvgPool2d, Input,
                     MaxPool2d, Model, ReLU, ReLU6, Sequential)

DIGIT_LABELS = [str(d) for d in range(10)]
CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def digits_cnn(seed: int = 0) -> Graph:
    # The last conv is unpadded (4x4 -> 2x2) so its receptive field, 10 pixels, covers the
    # whole 8x8 digit before the classifier.
    return Sequential([
        Conv2d(16, 3, padding="same", name="conv1"), ReLU(name="relu1"),
        Conv2d(32, 3, padding="same", name="conv2"), ReLU(name="relu2"),
        MaxPool2d(2, name="pool1"),
        Conv2d(64, 3, name="conv3"), ReLU(name="relu3"),
        Flatten(name="flatten"),
        Dense(10, name="logits"),
    ], input_shape=(1, 8, 8), name="digits-cnn", seed=seed, metadata={"labels": DIGIT_LABELS}).build()


def lenet5(seed: int = 0) -> Graph:
    return Sequential([
        Conv2d(6, 5, padding=2, name="conv1"), ReLU(name="relu1"), MaxPool2d(2, name="pool1"),
        Conv2d(16, 5, name="conv2"), ReLU(name="relu2"), MaxPool2d(2, name="pool2"),
        Flatten(name="flatten"),
        Dense(120, name="fc1"), ReLU(name="relu3"),
        Dense(84, name="fc2"), ReLU(name="relu4"),
        Dense(10, name="logits"),
    ], input_shape=(1, 28, 28), name="lenet5", seed=seed, metadata={"labels": DIGIT_LABELS}).build()


def vgg_small(seed: int = 0) -> Graph:
    layers = []
    for block, channels in enumerate((32, 64, 128), start=1):
        for i in (1, 2):
            layers += [Conv2d(channels, 3, padding="same", name=f"block{block}.conv{i}"),
                       ReLU(name=f"block{block}.relu{i}")]
        layers.append(MaxPool2d(2, name=f"block{block}.pool"))
    layers += [Flatten(name="flatten"), Dense(128, name="fc1"), ReLU(name="relu_fc1"), Dense(10, name="logits")]
    return Sequential(layers, input_shape=(3, 32, 32), name="vgg-small", seed=seed,
                      metadata={"labels": CIFAR10_LABELS}).build()


def _conv_bn(x, channels: int, kernel: int, stride: int, name: str):
    # Convs feeding a BatchNorm carry no bias: the BatchNorm's own shift makes it redundant.
    y = Conv2d(channels, kernel, stride=stride, padding=kernel // 2, bias=False, name=f"{name}.conv")(x)
    return BatchNorm2d(name=f"{name}.bn")(y)


def _residual_stage(x, channels: int, stride: int, name: str):
    y = ReLU(name=f"{name}.relu1")(_conv_bn(x, channels, 3, stride, f"{name}.a"))
    y = _conv_bn(y, channels, 3, 1, f"{name}.b")
    shortcut = x
    if stride != 1 or x.shape[1] != channels:
        shortcut = _conv_bn(x, channels, 1, stride, f"{name}.proj")
    y = Add(name=f"{name}.add")([y, shortcut])
    return ReLU(name=f"{name}.relu2")(y)


def resnet8(seed: int = 0) -> Graph:
    x = Input((3, 32, 32), seed=seed)
    y = ReLU(name="stem.relu")(_conv_bn(x, 16, 3, 1, "stem"))
    y = _residual_stage(y, 16, 1, "stage1")
    y = _residual_stage(y, 32, 2, "stage2")
    y = _residual_stage(y, 64, 2, "stage3")
    y = Flatten(name="flatten")(GlobalAvgPool2d(name="gap")(y))
    return Model(x, Dense(10, name="logits")(y), name="resnet8", metadata={"labels": CIFAR10_LABELS})


# (depthwise stride, pointwise output channels) per block; spatial 48 -> 24 -> 12 -> 6.
MOBILENET_TINY_BLOCKS = ((1, 32), (2, 64), (1, 64), (2, 128), (1, 128), (2, 256))


def mobilenet_tiny(seed: int = 0) -> Graph:
    x = Input((3, 96, 96), seed=seed)
    y = ReLU6(name="stem.relu")(_conv_bn(x, 16, 3, 2, "stem"))
    for i, (stride, channels) in enumerate(MOBILENET_TINY_BLOCKS, start=1):
        name = f"block{i}"
        y = DepthwiseConv2d(3, stride=stride, padding=1, bias=False, name=f"{name}.dw")(y)
        y = ReLU6(name=f"{name}.dw_relu")(BatchNorm2d(name=f"{name}.dw_bn")(y))
        y = Conv2d(channels, 1, bias=False, name=f"{name}.pw")(y)
        y = ReLU6(name=f"{name}.pw_relu")(BatchNorm2d(name=f"{name}.pw_bn")(y))
    y = Flatten(name="flatten")(GlobalAvgPool2d(name="gap")(y))
    labels = [f"class_{i}" for i in range(10)]
    return Model(x, Dense(10, name="logits")(y), name="mobilenet-tiny", metadata={"labels": labels})


_BUILDERS = {
    "digits-cnn": digits_cnn,
    "lenet5": lenet5,
    "vgg-small": vgg_small,
    "resnet8": resnet8,
    "mobilenet-tiny": mobilenet_tiny,
}
NAMES = tuple(_BUILDERS)


def build(name: str, seed: int = 0) -> Graph:
    """The zoo model ``name`` with weights drawn from ``seed``."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise InputError(f"unknown zoo model; known: {', '.join(NAMES)}. Received: name={name!r}") from None
    return builder(seed)
