"""Summary figures checked against arithmetic written out by hand from each architecture.

Conventions used below (per sample, batch excluded):
- Conv params = M * C/g * KH * KW (+ M bias);  Conv MACs = M * OH * OW * (C/g * KH * KW)
- Dense params = out * in + out;                Dense MACs = out * in
- receptive field r and jump j per axis: r_out = r_in + (k - 1) * j_in, j_out = j_in * s
- activation bytes = 4 * number of output elements
"""
import json

import pytest

from edgecnn.compiler import zoo
from edgecnn.compiler.summary import summarize, with_input_shape
from edgecnn.runtime.errors import InputError


def rows(graph):
    return {layer.name: layer for layer in summarize(graph).layers}


# -- LeNet-5 (1 x 28 x 28) ------------------------------------------------------------------------
LENET5 = {
    # name:   (output shape,      params,              MACs,                     RF, jump)
    "conv1": (("N", 6, 28, 28), 6 * 1 * 5 * 5 + 6, 6 * 28 * 28 * (1 * 5 * 5), 5, 1),
    "relu1": (("N", 6, 28, 28), 0, 0, 5, 1),
    "pool1": (("N", 6, 14, 14), 0, 0, 5 + (2 - 1) * 1, 2),                     # 6
    "conv2": (("N", 16, 10, 10), 16 * 6 * 5 * 5 + 16, 16 * 10 * 10 * (6 * 5 * 5), 6 + (5 - 1) * 2, 2),  # 14
    "relu2": (("N", 16, 10, 10), 0, 0, 14, 2),
    "pool2": (("N", 16, 5, 5), 0, 0, 14 + (2 - 1) * 2, 4),                     # 16
    "flatten": (("N", 400), 0, 0, None, None),
    "fc1": (("N", 120), 120 * 400 + 120, 120 * 400, None, None),
    "relu3": (("N", 120), 0, 0, None, None),
    "fc2": (("N", 84), 84 * 120 + 84, 84 * 120, None, None),
    "relu4": (("N", 84), 0, 0, None, None),
    "logits": (("N", 10), 10 * 84 + 10, 10 * 84, None, None),
}


def check_table(graph, expected):
    got = rows(graph)
    assert list(got) == list(expected)
    for name, (shape, params, macs, rf, jump) in expected.items():
        row = got[name]
        assert row.output_shape == shape, name
        assert row.params == params, name
        assert row.macs == macs, name
        assert row.receptive_field == (None if rf is None else (rf, rf)), name
        assert row.jump == (None if jump is None else (jump, jump)), name
        numel = 1
        for d in shape[1:]:
            numel *= d
        assert row.activation_bytes == 4 * numel, name


def test_lenet5_per_layer():
    check_table(zoo.build("lenet5"), LENET5)


def test_lenet5_totals_and_dense_equivalents():
    s = summarize(zoo.build("lenet5"))
    params = 156 + 2416 + 48120 + 10164 + 850
    assert params == 61706
    assert s.totals["params"] == s.totals["trainable_params"] == params
    assert s.totals["param_bytes"] == 4 * params
    assert s.totals["macs"] == 117600 + 240000 + 48000 + 10080 + 840 == 416520
    # Elements of every layer output: conv1, relu1, pool1, conv2, relu2, pool2, flatten, fc1, relu3,
    # fc2, relu4, logits.
    elements = 4704 + 4704 + 1176 + 1600 + 1600 + 400 + 400 + 120 + 120 + 84 + 84 + 10
    assert s.totals["activation_bytes_total"] == 4 * elements
    # Peak: while relu1 runs, conv1 (its input) and relu1 (its output) are both alive; the graph
    # input died after conv1. 2 x 6*28*28 floats beats input + conv1 (784 + 4704).
    assert s.totals["activation_bytes_peak"] == 4 * (4704 + 4704)
    r = rows(zoo.build("lenet5"))
    # A dense layer from the 1x28x28 input to conv1's 6x28x28 output: 784 * 4704 weights vs 150.
    assert r["conv1"].dense_equivalent_params == (1 * 28 * 28) * (6 * 28 * 28)
    assert r["conv2"].dense_equivalent_params == (6 * 14 * 14) * (16 * 10 * 10)
    for name in ("relu1", "pool1", "flatten", "fc1", "logits"):
        assert r[name].dense_equivalent_params is None, name


# -- digits-cnn (1 x 8 x 8) -----------------------------------------------------------------------
DIGITS = {
    "conv1": (("N", 16, 8, 8), 16 * 1 * 3 * 3 + 16, 16 * 8 * 8 * (1 * 3 * 3), 3, 1),
    "relu1": (("N", 16, 8, 8), 0, 0, 3, 1),
    "conv2": (("N", 32, 8, 8), 32 * 16 * 3 * 3 + 32, 32 * 8 * 8 * (16 * 3 * 3), 3 + 2 * 1, 1),
    "relu2": (("N", 32, 8, 8), 0, 0, 5, 1),
    "pool1": (("N", 32, 4, 4), 0, 0, 5 + 1 * 1, 2),
    "conv3": (("N", 64, 2, 2), 64 * 32 * 3 * 3 + 64, 64 * 2 * 2 * (32 * 3 * 3), 6 + 2 * 2, 2),
    "relu3": (("N", 64, 2, 2), 0, 0, 10, 2),
    "flatten": (("N", 256), 0, 0, None, None),
    "logits": (("N", 10), 10 * 256 + 10, 10 * 256, None, None),
}


def test_digits_cnn_per_layer_and_totals():
    graph = zoo.build("digits-cnn")
    check_table(graph, DIGITS)
    s = summarize(graph)
    assert s.totals["params"] == 160 + 4640 + 18496 + 2570 == 25866
    assert s.totals["macs"] == 9216 + 294912 + 73728 + 2560
    # The last conv sees 10 x 10 pixels: the whole 8 x 8 digit.
    assert rows(graph)["conv3"].receptive_field == (10, 10)


# -- resnet8 (3 x 32 x 32) ------------------------------------------------------------------------
def test_resnet8_totals_by_hand():
    bn = lambda c: 4 * c  # noqa: E731  scale, bias, running mean, running variance
    stem = 16 * 3 * 3 * 3 + bn(16)
    stage1 = 2 * (16 * 16 * 3 * 3 + bn(16))
    stage2 = (32 * 16 * 3 * 3 + bn(32)) + (32 * 32 * 3 * 3 + bn(32)) + (32 * 16 * 1 * 1 + bn(32))
    stage3 = (64 * 32 * 3 * 3 + bn(64)) + (64 * 64 * 3 * 3 + bn(64)) + (64 * 32 * 1 * 1 + bn(64))
    head = 10 * 64 + 10
    total = stem + stage1 + stage2 + stage3 + head
    assert total == 78714
    running_stats = 2 * (16 + 2 * 16 + 3 * 32 + 3 * 64)
    s = summarize(zoo.build("resnet8"))
    assert s.totals["params"] == total
    assert s.totals["trainable_params"] == total - running_stats
    r = {layer.name: layer for layer in s.layers}
    # Conv MACs: M * OH * OW * C * KH * KW.
    conv_macs = {
        "stem.conv": 16 * 32 * 32 * 3 * 9, "stage1.a.conv": 16 * 32 * 32 * 16 * 9, "stage1.b.conv": 16 * 32 * 32 * 16 * 9,
        "stage2.a.conv": 32 * 16 * 16 * 16 * 9, "stage2.b.conv": 32 * 16 * 16 * 32 * 9,
        "stage2.proj.conv": 32 * 16 * 16 * 16, "stage3.a.conv": 64 * 8 * 8 * 32 * 9,
        "stage3.b.conv": 64 * 8 * 8 * 64 * 9, "stage3.proj.conv": 64 * 8 * 8 * 32, "logits": 640,
    }
    for name, macs in conv_macs.items():
        assert r[name].macs == macs, name
    # Receptive fields through the residual DAG (max over the two branches at each Add):
    # stem 3 | stage1: a 5, b 7, add max(7, 3) = 7 | stage2 (stride 2 in a): a 7+2=9 (j2),
    # b 9+2*2=13, proj 7 (j2), add 13 | stage3: a 13+2*2=17 (j4), b 17+2*4=25, add 25 |
    # global pool over the 8x8 map: 25 + (8-1)*4 = 53, jump 4*8 = 32.
    expected_rf = {"stem.conv": (3, 1), "stage1.add": (7, 1), "stage2.a.conv": (9, 2), "stage2.proj.conv": (7, 2),
                   "stage2.add": (13, 2), "stage3.a.conv": (17, 4), "stage3.add": (25, 4), "gap": (53, 32)}
    for name, (rf, jump) in expected_rf.items():
        assert r[name].receptive_field == (rf, rf) and r[name].jump == (jump, jump), name
    assert r["stage3.add"].output_shape == ("N", 64, 8, 8)
    assert r["gap"].output_shape == ("N", 64, 1, 1)


def test_vgg_small_and_mobilenet_param_totals_by_hand():
    conv = lambda cin, cout: cout * cin * 9 + cout  # noqa: E731
    vgg = (conv(3, 32) + conv(32, 32) + conv(32, 64) + conv(64, 64) + conv(64, 128) + conv(128, 128)
           + (128 * 128 * 4 * 4 + 128) + (10 * 128 + 10))
    assert summarize(zoo.build("vgg-small")).totals["params"] == vgg

    bn = lambda c: 4 * c  # noqa: E731
    blocks = [(16, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256)]  # (in, out) channels
    mobile = 16 * 3 * 9 + bn(16)
    for cin, cout in blocks:
        mobile += cin * 1 * 9 + bn(cin) + cout * cin + bn(cout)  # depthwise (no bias), pointwise (no bias)
    mobile += 10 * 256 + 10
    s = summarize(zoo.build("mobilenet-tiny"))
    assert s.totals["params"] == mobile
    r = {layer.name: layer for layer in s.layers}
    # Depthwise 3x3 on 16 channels at 48x48 (stride 1): 16 * 48 * 48 * 9 MACs, 144 weights standing
    # in for a dense layer of (16*48*48)^2.
    assert r["block1.dw"].macs == 16 * 48 * 48 * 9 and r["block1.dw"].params == 144
    assert r["block1.dw"].dense_equivalent_params == (16 * 48 * 48) ** 2
    # Stem stride 2 then 3x3 depthwise: RF 3 (j2) -> 3 + 2*2 = 7 (j2).
    assert r["block1.dw"].receptive_field == (7, 7) and r["block1.dw"].jump == (2, 2)


# -- input shape override ---------------------------------------------------------------------------
def test_input_shape_override_reinfers_shapes():
    graph = with_input_shape(zoo.build("resnet8"), (3, 64, 64))
    r = rows(graph)
    assert r["stage3.add"].output_shape == ("N", 64, 16, 16)
    assert r["stem.conv"].macs == 16 * 64 * 64 * 3 * 9
    # Global pool now covers a 16x16 map: 25 + (16-1)*4 = 85.
    assert r["gap"].receptive_field == (85, 85) and r["gap"].jump == (64, 64)
    assert r["logits"].output_shape == ("N", 10)


def test_input_shape_override_rejected_by_fixed_size_layers():
    with pytest.raises(InputError) as info:
        with_input_shape(zoo.build("lenet5"), (1, 32, 32))
    msg = str(info.value)
    assert "lenet5" in msg and "(1, 32, 32)" in msg and "'fc1'" in msg and "Received:" in msg
    with pytest.raises(InputError, match="per-sample shape"):
        with_input_shape(zoo.build("lenet5"), (28, 28))


def test_json_document_is_plain_json():
    d = summarize(zoo.build("digits-cnn")).to_dict()
    again = json.loads(json.dumps(d))
    assert again["totals"]["params"] == 25866
    assert [layer["name"] for layer in again["layers"]] == list(DIGITS)
    assert again["layers"][0]["receptive_field"] == [3, 3]


def test_text_table_columns_are_aligned():
    text = summarize(zoo.build("lenet5")).to_text()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("Layer"))
    body = [line for line in lines if line.split(" ")[0] in LENET5]
    assert len(body) == len(LENET5)
    # Right-aligned numeric columns end at the same offset on every row.
    params_end = header.index("Params") + len("Params")
    for line in body:
        assert line[params_end - 1].isdigit(), line
    assert "61,706" in text and "416,520" in text
