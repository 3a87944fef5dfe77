"""Corrupted models and input files through the command line, in-process.

Valid starting points: zoo models exported to ONNX once per session, and valid inputs for them.
Each example corrupts them (bytes or the ModelProto; arrays, archives and images) and drives
``edgecnn summary``, ``export`` and ``run`` (numpy and onnxruntime backends). The property is the
README's: exit code 0 (the corruption left something valid) or 2 with exactly one line on stderr,
``edgecnn COMMAND: error: ...``; never a traceback, never an exception out of ``main()``, and
never a pickle loaded.
"""
from __future__ import annotations

import io
import json
import pathlib
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from edgecnn.compiler import onnx_io, zoo
from edgecnn.compiler.cli import main

ort.set_default_logger_severity(3)  # onnxruntime's C++ log lines about refused models are noise here

MODELS = {"digits-cnn": (1, 8, 8), "lenet5": (1, 28, 28)}
# capsys is function-scoped; each example reads (and so clears) it before and after its call
CAPSYS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


class _Base(dict):
    def __repr__(self):  # hypothesis prints the arguments of a failing example
        return f"<ONNX files and inputs of {sorted(self)}>"


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """name -> (ONNX bytes, a valid input array) for each starting model."""
    root = tmp_path_factory.mktemp("fuzz-base")
    out = _Base()
    for name, shape in MODELS.items():
        path = onnx_io.save_onnx(zoo.build(name), root / f"{name}.onnx")
        x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
        out[name] = (path.read_bytes(), x)
    return out


def invoke(capsys, argv):
    """``main(argv)`` in-process: (exit code, stdout, stderr). Any exception escapes (a bug)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _strict(constant):
    raise AssertionError(f"--json printed {constant}, which JSON has no literal for")


def assert_json(stdout):
    """One JSON document, strictly: no NaN or Infinity (Python's json writes and reads them, JSON has none)."""
    return json.loads(stdout, parse_constant=_strict)


def assert_clean(rc, out, err, command, output=None):
    note(f"exit {rc}; stderr: {err!r}; stdout: {out[:500]!r}")
    assert "Traceback" not in err and "Traceback" not in out
    assert rc in (0, 2), rc
    assert err == "" or err.endswith("\n"), err
    lines = err[:-1].split("\n") if err else []
    assert all(line.isprintable() for line in lines), err
    if rc == 2:
        assert len(lines) == 1, err
        assert re.match(rf"^edgecnn {command}: error: \S", lines[0]), err
        event(f"{command}: exit 2")
        return
    event(f"{command}: exit 0")
    assert all(line.startswith("wrote ") for line in lines), err
    if output is not None and command == "run":
        with np.load(output, allow_pickle=False) as npz:
            assert npz.files and all(npz[k].dtype == np.float32 for k in npz.files)


# =============================================================================================
# Corrupted ONNX files
# =============================================================================================
DTYPES = [onnx.TensorProto.INT64, onnx.TensorProto.FLOAT16, onnx.TensorProto.STRING, onnx.TensorProto.DOUBLE,
          onnx.TensorProto.INT8, onnx.TensorProto.BOOL, onnx.TensorProto.UINT8, onnx.TensorProto.COMPLEX64,
          onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT32, onnx.TensorProto.UNDEFINED, 99]
OP_TYPES = ["FooBar", "Conv", "Relu", "Gemm", "MaxPool", "Softmax", "Add", "Concat", "Resize", "Identity",
            "Dropout", "Constant", "Reshape", "Flatten", "BatchNormalization", "Loop", "If", ""]
DOMAINS = ["com.microsoft", "custom.domain", "ai.onnx.ml", "ai.onnx", ""]
ints = st.integers


def _pick(seq, i):
    return seq[i % len(seq)] if len(seq) else None


def _mutate(model, draw):
    """One random structural corruption of ``model`` (in place); returns its description."""
    g = model.graph
    kind = draw(st.sampled_from([
        "init_dims", "init_dtype", "init_replace", "init_remove", "dangle", "cycle", "self_loop", "op_type",
        "domain", "input_dtype", "input_shape", "dup_output", "dup_graph_output", "remove_input",
        "remove_outputs", "output_name", "attribute", "opset", "ir_version", "remove_node", "dup_node",
        "metadata", "init_as_input", "constant_node", "sparse"]))
    i, j = draw(ints(0, 1000)), draw(ints(0, 1000))
    node = _pick(g.node, i)
    if kind == "init_dims" and g.initializer:
        t = _pick(g.initializer, i)
        del t.dims[:]
        t.dims.extend(draw(st.lists(ints(-2, 20), max_size=5)))
    elif kind == "init_dtype" and g.initializer:
        _pick(g.initializer, i).data_type = draw(st.sampled_from(DTYPES))
    elif kind == "init_replace" and g.initializer:
        t = _pick(g.initializer, i)
        shape = tuple(t.dims)
        choice = draw(st.sampled_from(["int64", "float16", "float64", "string", "bool", "scalar", "nan", "empty"]))
        if choice == "string":
            array = np.full(shape, "w", dtype=object)
            new = onnx.helper.make_tensor(t.name, onnx.TensorProto.STRING, shape, [b"w"] * int(np.prod(shape)))
        else:
            array = {"int64": lambda: np.ones(shape, np.int64), "float16": lambda: np.ones(shape, np.float16),
                     "float64": lambda: np.ones(shape, np.float64), "bool": lambda: np.ones(shape, bool),
                     "scalar": lambda: np.float32(1.0), "nan": lambda: np.full(shape, np.nan, np.float32),
                     "empty": lambda: np.zeros((0,), np.float32)}[choice]()
            new = onnx.numpy_helper.from_array(np.asarray(array), name=t.name)
        t.CopyFrom(new)
    elif kind == "init_remove" and g.initializer:
        del g.initializer[i % len(g.initializer)]
    elif kind == "dangle" and node is not None and node.input:
        node.input[j % len(node.input)] = draw(st.sampled_from(["nope", "", "input:0", " "]))
    elif kind == "cycle" and len(g.node) >= 2 and all(n.input and n.output for n in g.node):
        a, b = sorted([i % len(g.node), j % len(g.node)])
        if a == b:
            b = (a + 1) % len(g.node)
            a, b = sorted([a, b])
        g.node[a].input[0] = g.node[b].output[0]
    elif kind == "self_loop" and node is not None and node.input and node.output:
        node.input[0] = node.output[0]
    elif kind == "op_type" and node is not None:
        node.op_type = draw(st.sampled_from(OP_TYPES))
    elif kind == "domain" and node is not None:
        node.domain = draw(st.sampled_from(DOMAINS))
    elif kind == "input_dtype" and g.input:
        g.input[0].type.tensor_type.elem_type = draw(st.sampled_from(DTYPES))
    elif kind == "input_shape" and g.input:
        shape = g.input[0].type.tensor_type.shape
        how = draw(st.sampled_from(["drop_dim", "zero", "negative", "param", "clear", "add_dim", "huge"]))
        if how == "clear":
            g.input[0].type.tensor_type.ClearField("shape")
        elif how == "drop_dim" and shape.dim:
            del shape.dim[j % len(shape.dim)]
        elif how == "add_dim":
            shape.dim.add().dim_value = draw(ints(1, 4))
        elif shape.dim:
            d = shape.dim[j % len(shape.dim)]
            if how == "param":
                d.dim_param = draw(st.sampled_from(["H", "N", "batch", ""]))
            else:
                d.dim_value = {"zero": 0, "negative": -3, "huge": 1 << 40}[how]
    elif kind == "dup_output" and len(g.node) >= 2 and all(n.output for n in g.node):
        g.node[j % len(g.node)].output[0] = g.node[i % len(g.node)].output[0]
    elif kind == "dup_graph_output" and g.output:
        g.output.add().CopyFrom(g.output[0])
    elif kind == "remove_input":
        del g.input[:]
    elif kind == "remove_outputs":
        del g.output[:]
    elif kind == "output_name" and g.output and g.node and g.node[0].output:
        g.output[0].name = draw(st.sampled_from(["nope", "input", "", g.node[0].output[0]]))
    elif kind == "attribute" and node is not None:
        _mutate_attribute(node, draw, j)
    elif kind == "opset" and model.opset_import:
        how = draw(st.sampled_from(["version", "domain", "remove", "extra"]))
        if how == "version":
            model.opset_import[0].version = draw(st.sampled_from([0, 1, 5, 6, 9, 12, 22, 23, 30, 1000, -1]))
        elif how == "domain":
            model.opset_import[0].domain = draw(st.sampled_from(["com.microsoft", "ai.onnx.ml", "x"]))
        elif how == "remove":
            del model.opset_import[:]
        else:
            model.opset_import.add(domain="custom.domain", version=1)
    elif kind == "ir_version":
        model.ir_version = draw(st.sampled_from([0, 1, 2, 3, 4, 11, 12, 99, -1]))
    elif kind == "remove_node" and g.node:
        del g.node[i % len(g.node)]
    elif kind == "dup_node" and node is not None:
        g.node.add().CopyFrom(node)
    elif kind == "metadata":
        key = draw(st.sampled_from(["labels", "preprocessing"]))
        value = draw(st.sampled_from([
            "not json", "10", "null", "[]", '["a"]', json.dumps([str(k) for k in range(10)]), '{"a": 1}',
            '"0123456789"', "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]", "[[0], [1], [2], [3], [4], [5], [6], [7], [8], [9]]",
            '{"mean": [0.5], "std": [0]}', '{"mean": "x", "std": [1]}', '{"mean": [0.1, 0.2], "std": [1, 1]}',
            '{"mean": [NaN], "std": [1]}', "[]", '{"std": [1e-45]}', '{"mean": [[0.5]], "std": [[0.5]]}']))
        for p in model.metadata_props:
            if p.key == key:
                p.value = value
                break
        else:
            model.metadata_props.add(key=key, value=value)
    elif kind == "init_as_input" and g.initializer:
        t = _pick(g.initializer, i)
        vi = g.input.add()
        vi.CopyFrom(onnx.helper.make_tensor_value_info(t.name, onnx.TensorProto.FLOAT,
                                                       draw(st.lists(ints(1, 5), max_size=3))))
    elif kind == "constant_node" and node is not None and node.input:
        # a node input fed by a Constant node of an odd form
        name = f"const_{i}"
        how = draw(st.sampled_from(["no_value", "string", "ints", "tensor_int", "float"]))
        attrs = {"no_value": {}, "string": {"value_string": "x"}, "ints": {"value_ints": [1, 2]},
                 "tensor_int": {"value": onnx.numpy_helper.from_array(np.ones((2, 2), np.int64))},
                 "float": {"value_float": 2.0}}[how]
        g.node.insert(0, onnx.helper.make_node("Constant", [], [name], name=name, **attrs))
        node.input[j % len(node.input)] = name
    elif kind == "sparse" and g.initializer:
        t = g.initializer[i % len(g.initializer)]
        values = onnx.helper.make_tensor(t.name + "_v", onnx.TensorProto.FLOAT, [1], [1.0])
        indices = onnx.helper.make_tensor(t.name + "_i", onnx.TensorProto.INT64, [1], [0])
        g.sparse_initializer.add().CopyFrom(onnx.helper.make_sparse_tensor(values, indices, list(t.dims)))
    else:
        return f"{kind} (not applicable)"
    return kind


def _mutate_attribute(node, draw, j):
    how = draw(st.sampled_from(["ints", "type", "delete", "unknown", "string", "empty"]))
    if how == "unknown" or not node.attribute:
        node.attribute.append(onnx.helper.make_attribute(draw(st.sampled_from(["bogus", "axis", "group",
                                                                              "kernel_shape"])),
                                                         draw(st.sampled_from([3, -1, [0, 0], "x", 1.5]))))
        return
    attr = node.attribute[j % len(node.attribute)]
    if how == "delete":
        node.attribute.remove(attr)
    elif how == "ints":
        new = onnx.helper.make_attribute(attr.name, draw(st.one_of(
            st.lists(ints(-3, 40), min_size=1, max_size=6), ints(-5, 1 << 40))))
        attr.CopyFrom(new)
    elif how == "type":
        attr.CopyFrom(onnx.helper.make_attribute(attr.name, draw(st.sampled_from([1.5, [1.5, 2.5], "SAME", 7]))))
    elif how == "string":
        attr.CopyFrom(onnx.helper.make_attribute(attr.name, draw(st.sampled_from(["SAME_UPPER", "VALID", "bad",
                                                                                  ""]))))
    else:  # an empty list
        attr.CopyFrom(onnx.AttributeProto(name=attr.name, type=attr.type if attr.type in (
            onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS) else onnx.AttributeProto.INTS))


@st.composite
def corrupt_onnx(draw, data: bytes):
    """(bytes, description, the structural mutations or None) of a corrupted copy of ``data``."""
    how = draw(st.sampled_from(["proto", "proto", "proto", "truncate", "flip", "empty", "garbage", "junk_tail"]))
    if how == "truncate":
        k = draw(ints(0, len(data) - 1))
        return data[:k], f"truncated at {k}", None
    if how == "flip":
        buf = bytearray(data)
        flips = draw(st.lists(st.tuples(ints(0, len(data) - 1), ints(1, 255)), min_size=1, max_size=8))
        for pos, x in flips:
            buf[pos] ^= x
        return bytes(buf), f"flipped {flips}", None
    if how == "empty":
        return b"", "empty", None
    if how == "garbage":
        return draw(st.binary(min_size=1, max_size=64)), "garbage", None
    if how == "junk_tail":
        return data + draw(st.binary(min_size=1, max_size=16)), "junk appended", None
    model = onnx.ModelProto.FromString(data)
    done = [_mutate(model, draw) for _ in range(draw(ints(1, 3)))]
    return model.SerializeToString(), f"proto: {done}", done


COMMANDS = ["summary", "run-numpy", "run-onnxruntime", "export"]


def _drive(capsys, command, model_path, x_path, tmp, as_json):
    flags = ["--json"] if as_json else []
    if command == "summary":
        return "summary", None, invoke(capsys, ["summary", model_path, *flags])
    if command == "export":
        return "export", None, invoke(capsys, ["export", model_path, "-o", tmp / "re.onnx", *flags])
    out = tmp / "out.npz"
    backend = command.split("-")[1]
    return "run", out, invoke(capsys, ["run", model_path, "--backend", backend, "--input", x_path, "-o", out, *flags])


@CAPSYS
@given(st.sampled_from(list(MODELS)), st.data(), st.sampled_from(COMMANDS), st.booleans())
def test_corrupted_onnx_files_fail_cleanly(base, capsys, name, data, command, as_json):
    original, x = base[name]
    blob, what, done = data.draw(corrupt_onnx(original))
    note(f"{name}: {what}")
    for kind in done if isinstance(done, list) else [what.split(" ")[0]]:
        event(f"corruption: {kind}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "m.onnx").write_bytes(blob)
        np.save(tmp / "x.npy", x)
        cmd, out, (rc, stdout, stderr) = _drive(capsys, command, tmp / "m.onnx", tmp / "x.npy", tmp, as_json)
        assert_clean(rc, stdout, stderr, cmd, out if rc == 0 else None)
        if rc == 0 and as_json:
            assert_json(stdout)


# =============================================================================================
# Corrupted inputs: .npy, .npz, images
# =============================================================================================
class _Touch:
    """Pickled into an object array: loading it would create ``path`` (it must never load)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


ARRAY_DTYPES = ["float32", "float64", "float16", "int32", "int64", "uint8", "bool", "complex64", "U3",
                "datetime64[s]", "structured", "object", "longdouble"]


@st.composite
def arrays(draw, shape, marker):
    """An array of the model's shape or a wrong one, of any dtype, maybe with NaN/inf."""
    how = draw(st.sampled_from(["right", "right", "no_batch", "rank", "dims", "zero_batch", "scalar"]))
    if how == "right":
        dims = (draw(ints(1, 3)), *shape)
    elif how == "no_batch":
        dims = tuple(shape)
    elif how == "zero_batch":
        dims = (0, *shape)
    elif how == "scalar":
        dims = ()
    elif how == "rank":
        dims = tuple(draw(st.lists(ints(1, 4), min_size=1, max_size=6)))
    else:
        dims = (draw(ints(1, 2)), *(max(1, d + draw(ints(-2, 2))) for d in shape))
    dtype = draw(st.sampled_from(ARRAY_DTYPES))
    size = int(np.prod(dims)) if dims else 1
    values = np.random.default_rng(draw(ints(0, 100))).standard_normal(size)
    special = draw(st.sampled_from(["none", "none", "nan", "inf", "-inf", "huge", "all_nan"]))
    if special == "nan" and size:
        values[draw(ints(0, size - 1))] = np.nan
    elif special in ("inf", "-inf") and size:
        values[draw(ints(0, size - 1))] = float(special)
    elif special == "huge":
        values = values * 1e38
    elif special == "all_nan":
        values[:] = np.nan
    if dtype == "structured":
        arr = np.zeros(dims, dtype=[("a", "f4"), ("b", "i4")])
    elif dtype == "object":
        arr = np.empty(dims, dtype=object)
        arr.reshape(-1)[:] = [_Touch(marker)] * size
    elif dtype == "U3":
        arr = np.full(dims, "abc")
    elif dtype == "datetime64[s]":
        arr = np.zeros(dims, dtype="datetime64[s]")
    else:
        with np.errstate(all="ignore"):
            arr = values.reshape(dims).astype(dtype)
    return arr, f"{how} {dims} {dtype} {special}"


def _npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _corrupt_bytes(draw, blob: bytes) -> tuple[bytes, str]:
    how = draw(st.sampled_from(["none", "none", "none", "truncate", "flip", "empty"]))
    if how == "truncate" and blob:
        k = draw(ints(0, len(blob) - 1))
        return blob[:k], f"truncated at {k}"
    if how == "flip" and blob:
        buf = bytearray(blob)
        flips = draw(st.lists(st.tuples(ints(0, len(blob) - 1), ints(1, 255)), min_size=1, max_size=6))
        for pos, x in flips:
            buf[pos] ^= x
        return bytes(buf), f"flipped {flips}"
    if how == "empty":
        return b"", "empty"
    return blob, "intact"


def _image_bytes(draw, fmt: str) -> bytes:
    from PIL import Image

    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I", "F", "LA", "CMYK", "I;16"]))
    size = (draw(ints(1, 40)), draw(ints(1, 40)))
    pixels = np.random.default_rng(draw(ints(0, 100))).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    try:
        image = image.convert(mode)
    except ValueError:
        image = image.convert("L")
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):  # this format cannot store this mode
        buf = io.BytesIO()
        image.convert("RGB" if fmt != "PPM" else "RGB").save(buf, format=fmt)
    return buf.getvalue()


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".pgm": "PPM", ".ppm": "PPM", ".bmp": "BMP", ".gif": "GIF",
                 ".tif": "TIFF", ".webp": "WEBP"}


@st.composite
def input_files(draw, shape, marker):
    """(files {relative path: bytes}, the --input path relative to the folder, description)."""
    kind = draw(st.sampled_from(["npy", "npy", "npz", "npz", "image", "image", "image_dir", "other"]))
    if kind == "npy":
        arr, what = draw(arrays(shape, marker))
        blob, how = _corrupt_bytes(draw, _npy_bytes(arr))
        return {"x.npy": blob}, "x.npy", f"npy {what}, {how}"
    if kind == "npz":
        names = draw(st.lists(st.sampled_from(["input", "input", "x", "arr_0", "input.npy", "a/b"]), min_size=0,
                              max_size=3, unique=True))
        buf = io.BytesIO()
        described = []
        with zipfile.ZipFile(buf, "w") as zf:
            for n in names:
                arr, what = draw(arrays(shape, marker))
                member = n if n.endswith(".npy") else f"{n}.npy"
                zf.writestr(member, _npy_bytes(arr) if draw(st.integers(0, 5)) else b"not an npy")
                described.append(f"{n}: {what}")
        blob, how = _corrupt_bytes(draw, buf.getvalue())
        return {"x.npz": blob}, "x.npz", f"npz {described}, {how}"
    if kind in ("image", "image_dir"):
        suffix = draw(st.sampled_from(list(IMAGE_FORMATS)))
        files = {}
        for k in range(1 if kind == "image" else draw(ints(1, 3))):
            blob, how = _corrupt_bytes(draw, _image_bytes(draw, IMAGE_FORMATS[suffix]))
            files[f"imgs/{k}{suffix}"] = blob
        if kind == "image":
            return files, f"imgs/0{suffix}", f"image {suffix} {how}"
        return files, "imgs", f"image folder {suffix} x{len(files)}"
    other = draw(st.sampled_from(["x.txt", "x", "x.npy.gz", "empty_dir", "missing.npy"]))
    if other == "empty_dir":
        return {"d/.keep": b""}, "d", "a folder without images"
    if other == "missing.npy":
        return {}, "missing.npy", "no such file"
    return {other: b"1,2,3"}, other, f"unsupported {other}"


@pytest.mark.filterwarnings("ignore:Duplicate name")  # an .npz with a member twice is one of the corruptions
@CAPSYS
@given(st.data(), st.sampled_from(["digits-cnn", "digits-onnx", "lenet5"]), st.sampled_from(["numpy", "onnxruntime"]),
       st.booleans())
def test_corrupted_inputs_fail_cleanly(base, capsys, data, model, backend, as_json):
    name = model.replace("-onnx", "-cnn") if model.endswith("-onnx") else model
    shape = MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        marker = tmp / "pickle-was-loaded"
        files, given_path, what = data.draw(input_files(shape, marker))
        note(f"{model} {backend}: {what}")
        event(what.split(" ")[0])
        for rel, blob in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(blob)
        model_arg = model
        if model == "digits-onnx":
            model_arg = tmp / "digits.onnx"
            model_arg.write_bytes(base["digits-cnn"][0])
        out = tmp / "out.npz"
        argv = ["run", model_arg, "--backend", backend, "--input", tmp / given_path, "-o", out]
        rc, stdout, stderr = invoke(capsys, argv + (["--json"] if as_json else []))
        assert not marker.exists(), "a pickle was loaded"
        assert_clean(rc, stdout, stderr, "run", out if rc == 0 else None)
        if rc == 0 and as_json:
            assert_json(stdout)


# =============================================================================================
# A few corrupted files through a TVM compile (slow: TVM imports and compiles what it accepts)
# =============================================================================================
def _tvm_cases(data: bytes) -> dict:
    def edit(fn):
        model = onnx.ModelProto.FromString(data)
        fn(model)
        return model.SerializeToString()

    def unknown_op(m):
        m.graph.node[1].op_type = "FooBar"

    def dangling(m):
        m.graph.node[2].input[0] = "nope"

    def int_input(m):
        m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64

    def bad_weight(m):
        del m.graph.initializer[0].dims[:]
        m.graph.initializer[0].dims.extend([3, 3])

    def cycle(m):
        m.graph.node[0].input[0] = m.graph.node[3].output[0]

    return {"truncated": data[: len(data) // 3], "flipped": bytes(b ^ 0x5A if i % 97 == 5 else b
                                                                    for i, b in enumerate(data)),
            "unknown-op": edit(unknown_op), "dangling": edit(dangling), "int64-input": edit(int_input),
            "weight-shape": edit(bad_weight), "cycle": edit(cycle)}


@pytest.mark.slow
def test_corrupted_onnx_files_through_tvm_compile_fail_cleanly(base, capsys, tmp_path):
    for case, blob in _tvm_cases(base["digits-cnn"][0]).items():
        path = tmp_path / f"{case}.onnx"
        path.write_bytes(blob)
        bundle = tmp_path / f"{case}-bundle"
        rc, out, err = invoke(capsys, ["compile", path, "--target", "host", "-o", bundle])
        assert rc == 2, (case, rc, out, err)
        lines = err[:-1].split("\n")  # progress lines first ("edgecnn compile: importing ..."), the error last
        assert "Traceback" not in err and all(line.startswith("edgecnn compile: ") for line in lines), (case, err)
        assert lines[-1].startswith("edgecnn compile: error: ") and sum(": error: " in line for line in lines) == 1, \
            (case, err)
        assert not bundle.exists(), case  # no half bundle
