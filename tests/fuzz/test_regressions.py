"""The smallest failing examples the fuzzers found, each kept as a plain test of its fix."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgecnn.compiler import layers as L
from edgecnn.compiler import numpy_backend, onnx_io
from edgecnn.compiler.errors import ModelDefinitionError


def _ort_matches_numpy(graph, x):
    """Export (checker and strict shape inference included), run in onnxruntime, compare."""
    model = onnx_io.export_model(graph)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    want = numpy_backend.run(graph, {"input": x})[graph.outputs[0]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    back = numpy_backend.run(onnx_io.import_model(model), {"input": x})[graph.outputs[0]]
    np.testing.assert_allclose(back, want, rtol=1e-5, atol=1e-6)
    return model


def _x(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


# -- pools whose windows read only padding ------------------------------------------------------
@pytest.mark.parametrize("layer", [L.MaxPool2d((1, 1), stride=1, padding=1, name="pool"),
                                   L.AvgPool2d(2, stride=1, padding=2, name="pool")])
def test_pool_pads_must_be_smaller_than_the_kernel(layer):
    # was accepted: MaxPool gave -inf and AvgPool 0/0 = NaN where a window lies in the padding,
    # and onnxruntime refused the exported model ("Pad should be smaller than kernel")
    with pytest.raises(ModelDefinitionError, match=r"^Layer 'pool': \w+Pool: pads must be smaller than the "
                                                   r"kernel on each axis\. Received: kernel_shape=\["):
        L.Sequential([layer], input_shape=(1, 5, 5)).build()


def test_dilated_pool_window_with_no_tap_on_the_input_is_refused():
    # 'same' pads (1, 1) around one pixel, kernel 2 dilated by 2: the taps at -1 and +1 miss it
    with pytest.raises(ModelDefinitionError, match=r"^Layer 'pool': MaxPool: every window must have a tap on "
                                                   r"the input; window 0 of axis 3 reads only padding\. Received"):
        L.Sequential([L.MaxPool2d((1, 2), stride=(1, 2), padding="same", dilation=(1, 2), name="pool")],
                     input_shape=(1, 1, 1)).build()


# -- 'same' padding that onnxruntime reads otherwise ------------------------------------------------
def test_same_padding_of_a_dilated_conv_is_exported_as_pads():
    # onnxruntime: "Dilation not supported for AutoPadType::SAME_UPPER" at run time
    graph = L.Sequential([L.Conv2d(2, 3, padding="same", dilation=2, name="conv")], input_shape=(1, 7, 7)).build()
    model = _ort_matches_numpy(graph, _x(1, 1, 7, 7))
    (attrs,) = [{a.name for a in n.attribute} for n in model.graph.node]
    assert "auto_pad" not in attrs and "pads" in attrs


def test_same_padding_of_a_dilated_maxpool_is_exported_as_pads():
    # onnxruntime sized the SAME pads without the dilation: a (1, 1, 5, 5) output for a 7x7 input
    graph = L.Sequential([L.MaxPool2d(3, stride=1, padding="same", dilation=2)], input_shape=(1, 7, 7)).build()
    _ort_matches_numpy(graph, _x(1, 1, 7, 7))


def test_same_padding_of_a_pool_needing_no_pad_is_exported_as_pads():
    # kernel 1, stride 2 on 2 pixels: SAME's total pad is -1, clamped to 0; onnxruntime did not
    # clamp it ("padding values must be non-negative")
    graph = L.Sequential([L.MaxPool2d(1, stride=2, padding="same")], input_shape=(1, 2, 2)).build()
    _ort_matches_numpy(graph, _x(1, 1, 2, 2))


# -- ceil_mode windows starting in the end padding ---------------------------------------------------
@pytest.mark.parametrize("layer, shape", [
    # both axes: the window ceil_mode adds starts in the end padding (dropped); floor mode is the same pool
    (L.MaxPool2d(2, stride=2, padding=1, ceil_mode=True), (1, 5, 5)),
    (L.AvgPool2d((1, 1), stride=(1, 2), ceil_mode=True), (1, 1, 2)),
    # one axis drops it, the other needs ceil_mode: the end pad is cut where the last window ends
    (L.AvgPool2d(3, stride=3, padding=1, ceil_mode=True, count_include_pad=True), (1, 2, 3)),
    (L.AvgPool2d(3, stride=3, padding=1, ceil_mode=True), (1, 2, 3)),
], ids=["max-both-axes", "avg-no-pads", "avg-include-pad-one-axis", "avg-one-axis"])
def test_ceil_mode_pool_whose_last_window_is_dropped_exports(layer, shape):
    # was: "the exported ONNX model fails the ONNX checker: [ShapeInferenceError] ... Inferred shape and
    # existing shape differ" (onnx's shape inference counts the dropped window)
    graph = L.Sequential([layer], input_shape=shape).build()
    _ort_matches_numpy(graph, _x(2, *shape))


# -- corrupted files through the command line -------------------------------------------------------
def _cli(capsys, *argv):
    from edgecnn.compiler.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, err


def _digits_onnx():
    import onnx

    from edgecnn.compiler import zoo

    return onnx.ModelProto.FromString(onnx_io.export_model(zoo.build("digits-cnn")).SerializeToString())


def _assert_one_line(rc, err, command, *fragments):
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith(f"edgecnn {command}: error: "), err
    for fragment in fragments:
        assert fragment in err, err


def test_string_initializer_read_by_a_node_is_refused(tmp_path, capsys):
    # was: ValueError "could not convert string to float: 'w'" out of export (and run)
    import onnx

    model = _digits_onnx()
    weight = model.graph.initializer[0]
    weight.CopyFrom(onnx.helper.make_tensor(weight.name, onnx.TensorProto.STRING, list(weight.dims),
                                            [b"w"] * int(np.prod(weight.dims))))
    onnx.save(model, tmp_path / "m.onnx")
    rc, err = _cli(capsys, "export", tmp_path / "m.onnx", "-o", tmp_path / "re.onnx")
    _assert_one_line(rc, err, "export", "node 'conv1' (Conv) reads constant 'conv1.weight', which holds object "
                                        "values; edgecnn parameters are real numbers. Received: dtype=object")


def test_initializer_of_no_onnx_element_type_is_refused(tmp_path, capsys):
    # was: ValueError "Enum DataType has no name defined for value 99" while formatting the error
    model = _digits_onnx()
    model.graph.initializer[0].data_type = 99
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    rc, err = _cli(capsys, "summary", tmp_path / "m.onnx")
    _assert_one_line(rc, err, "summary", "initializer 'conv1.weight' is malformed", "type 99 (no ONNX element type)")


def test_graph_without_outputs_is_refused(tmp_path, capsys):
    # was: imported and "ran", writing an .npz without arrays
    model = _digits_onnx()
    del model.graph.output[:]
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    rc, err = _cli(capsys, "summary", tmp_path / "m.onnx")
    _assert_one_line(rc, err, "summary", "a graph needs at least one output. Received: outputs=[]")


def test_text_that_is_not_utf8_is_refused(tmp_path, capsys):
    # a flipped byte in an op type: protobuf handed b'\xc3onv' over as bytes and the unsupported-op
    # listing failed with "TypeError: sequence item 0: expected str instance, bytes found"
    data = bytearray(_digits_onnx().SerializeToString())
    data[data.index(b"Conv")] ^= 0x80
    (tmp_path / "m.onnx").write_bytes(bytes(data))
    rc, err = _cli(capsys, "summary", tmp_path / "m.onnx")
    _assert_one_line(rc, err, "summary", "is corrupted: model.graph.node[0].op_type is not UTF-8 text. "
                                         "Received: model.graph.node[0].op_type=b'\\xc3onv'")


@pytest.mark.parametrize("op, attr, value", [("MaxPool", "ceil_mode", "SAME_UPPER"), ("Conv", "group", [1, 2]),
                                             ("Flatten", "axis", "x")])
def test_attribute_of_the_wrong_type_is_refused(tmp_path, capsys, op, attr, value):
    # was: ValueError / TypeError from int() in the op's attribute checks
    import onnx

    model = _digits_onnx()
    node = next(n for n in model.graph.node if n.op_type == op)
    kept = [a for a in node.attribute if a.name != attr]
    del node.attribute[:]
    node.attribute.extend([*kept, onnx.helper.make_attribute(attr, value)])
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    rc, err = _cli(capsys, "summary", tmp_path / "m.onnx")
    _assert_one_line(rc, err, "summary", f"Layer '{node.name}': {op}: an attribute has the wrong type (",
                     "Received: attrs={")


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_input_without_samples_is_refused(tmp_path, capsys, backend):
    # was: ValueError "cannot reshape array of size 0 into shape (1,newaxis,0)" in the numpy backend
    np.save(tmp_path / "x.npy", np.zeros((0, 1, 8, 8), np.float32))
    rc, err = _cli(capsys, "run", "digits-cnn", "--backend", backend, "--input", tmp_path / "x.npy")
    _assert_one_line(rc, err, "run", "input 'input' is empty: every dimension needs at least one element",
                     "Received: shape=(0, 1, 8, 8)")


@pytest.mark.parametrize("blob", [b"P5", b"P5\n8 8\n"], ids=["pgm-magic", "pgm-header"])
def test_truncated_image_is_refused(tmp_path, capsys, blob):
    # was: ValueError "Reached EOF while reading header" out of Pillow
    (tmp_path / "x.pgm").write_bytes(blob)
    rc, err = _cli(capsys, "run", "digits-cnn", "--input", tmp_path / "x.pgm")
    _assert_one_line(rc, err, "run", "x.pgm' is not a readable image: ")


def _npy(arr) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_npy_with_a_broken_header_is_refused(tmp_path, capsys, suffix):
    # a flipped byte in the header's Python literal: SyntaxError "source code string cannot contain
    # null bytes" (tokenize.TokenError for others) out of np.load
    blob = bytearray(_npy(np.zeros((1, 1, 8, 8), np.float32)))
    blob[9] ^= 1
    if suffix == ".npz":
        import zipfile

        with zipfile.ZipFile(tmp_path / "x.npz", "w") as zf:
            zf.writestr("input.npy", bytes(blob))
    else:
        (tmp_path / "x.npy").write_bytes(bytes(blob))
    rc, err = _cli(capsys, "run", "digits-cnn", "--input", tmp_path / f"x{suffix}")
    _assert_one_line(rc, err, "run", f"x{suffix}' is not a readable {suffix} ")


def test_attribute_that_is_not_utf8_is_refused(tmp_path, capsys):
    # a flipped byte in auto_pad's "SAME_UPPER": UnicodeDecodeError out of the importer
    data = bytearray(_digits_onnx().SerializeToString())
    data[data.index(b"SAME_UPPER")] ^= 0x80
    (tmp_path / "m.onnx").write_bytes(bytes(data))
    rc, err = _cli(capsys, "summary", tmp_path / "m.onnx")
    _assert_one_line(rc, err, "summary", "Node 'conv1' (Conv): attribute 'auto_pad' is not UTF-8 text. "
                                         "Received: auto_pad=b'\\xd3AME_UPPER'")


def test_attribute_without_a_value_of_its_type_is_refused(tmp_path, capsys):
    # a flipped type byte made it UNDEFINED: TypeError "object of type 'NoneType' has no len()"
    import onnx

    model = _digits_onnx()
    attr = next(a for a in model.graph.node[0].attribute if a.name == "kernel_shape")
    attr.type = onnx.AttributeProto.UNDEFINED
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    rc, err = _cli(capsys, "summary", tmp_path / "m.onnx")
    _assert_one_line(rc, err, "summary", "Node 'conv1' (Conv): attribute 'kernel_shape' holds no value of its "
                                         "declared type")


def test_spatial_attribute_that_is_not_a_list_is_refused(tmp_path, capsys):
    # kernel_shape read as an INT: TypeError "object of type 'int' has no len()"
    import onnx

    model = _digits_onnx()
    attr = next(a for a in model.graph.node[0].attribute if a.name == "kernel_shape")
    attr.CopyFrom(onnx.helper.make_attribute("kernel_shape", 3))
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    rc, err = _cli(capsys, "summary", tmp_path / "m.onnx")
    _assert_one_line(rc, err, "summary", "Node 'conv1' (Conv): attribute 'kernel_shape' must be a list of integers. "
                                         "Received: kernel_shape=3")


@pytest.mark.parametrize("node_index, position", [(1, 0), (0, 1)], ids=["relu-data", "conv-weight"])
def test_required_input_left_empty_is_refused(tmp_path, capsys, node_index, position):
    # an empty input name (ONNX's "absent") where the op needs one: TypeError "'NoneType' object is
    # not iterable" in shape inference, or a NumPy error from the constant folding of the rest
    model = _digits_onnx()
    node = model.graph.node[node_index]
    node.input[position] = ""
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    rc, err = _cli(capsys, "summary", tmp_path / "m.onnx")
    _assert_one_line(rc, err, "summary", f"Layer '{node.name}': {node.op_type}: input {position} is required but "
                                         "empty. Received: inputs=")


def test_conv_on_a_symbolic_spatial_dimension_is_refused(tmp_path, capsys):
    # an input declared (N, 1, 'H', 8): TypeError "bad operand type for unary -: 'str'" in the pad arithmetic
    model = _digits_onnx()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    rc, err = _cli(capsys, "summary", tmp_path / "m.onnx")
    _assert_one_line(rc, err, "summary", "Layer 'conv1': Conv: spatial dimensions must be known integers. "
                                         "Received: input_shape=('N', 1, 'H', 8)")


def test_error_naming_a_tensor_with_a_newline_stays_one_line(tmp_path, capsys):
    # names come from the file: a corrupted one may hold a newline or other control characters
    # (\x1e, which str.splitlines also breaks at), and the error printed them raw, on two lines
    model = _digits_onnx()
    model.graph.node[1].input[0] = "conv1\nrelu\x1e"
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    rc, err = _cli(capsys, "summary", tmp_path / "m.onnx")
    _assert_one_line(rc, err, "summary", "reads 'conv1\\nrelu\\x1e'")
    assert err[:-1].isprintable()


def test_pool_empty_window_check_matches_tap_by_tap():
    # the check runs in bounded time whatever the attributes (it used to walk every tap of every
    # window); here it agrees with walking them on small pools
    import itertools

    from edgecnn.compiler.ops import make_op
    from edgecnn.compiler.ir import Node

    for size, k, s, d, pb, pe in itertools.product(range(1, 5), range(1, 4), range(1, 3), range(1, 4), range(3),
                                                   range(3)):
        if pb >= k or pe >= k or size + pb + pe < d * (k - 1) + 1:
            continue
        out = (size + pb + pe - d * (k - 1) - 1) // s + 1
        empty = any(not any(pb <= o * s + j * d < pb + size for j in range(k)) for o in range(out))
        op = make_op(Node("MaxPool", "pool", ["x"], ["y"], {"kernel_shape": [1, k], "strides": [1, s],
                                                             "dilations": [1, d], "pads": [0, pb, 0, pe]}))
        try:
            op.infer_shapes([(1, 1, 1, size)])
            refused = False
        except ModelDefinitionError as exc:
            assert "reads only padding" in str(exc)
            refused = True
        assert refused == empty, (size, k, s, d, pb, pe)


def test_onnxruntime_refusing_the_inputs_at_run_time_is_one_line(tmp_path, capsys):
    # the file declares batch 0, which edgecnn reads as symbolic and onnxruntime as 0: its
    # InvalidArgument ("Got invalid dimensions for input") escaped session.run
    model = _digits_onnx()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    rc, err = _cli(capsys, "run", tmp_path / "m.onnx", "--backend", "onnxruntime", "--input", tmp_path / "x.npy")
    _assert_one_line(rc, err, "run", "onnxruntime cannot run '", "Got invalid dimensions for input: input")


def test_run_json_of_nan_outputs_is_strict_json(tmp_path, capsys):
    # NaN logits gave "probability": NaN, which no strict JSON reader takes
    import json

    x = np.zeros((1, 1, 8, 8), np.float32)
    x[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    from edgecnn.compiler.cli import main

    assert main(["run", "digits-cnn", "--input", str(tmp_path / "x.npy"), "--json"]) == 0
    out = capsys.readouterr().out

    def refuse(constant):
        raise AssertionError(constant)

    doc = json.loads(out, parse_constant=refuse)
    assert doc["top"][0][0]["probability"] is None
