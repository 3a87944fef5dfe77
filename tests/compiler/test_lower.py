"""ONNX -> Relax -> preset pipeline -> bundle: numerics on the host, ELF for aarch64, kernels for CUDA.

Bundles are compiled once per (model, preset) for the whole session; each test inspects them.
References are independent of the compiled code: the NumPy backend run here on the zoo graph,
onnxruntime on the bundle's ONNX, ELF headers read byte by byte, nvcc on the CUDA source.
"""
import hashlib
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgecnn.compiler import numpy_backend, zoo
from edgecnn.compiler.tvm import bundle as bundle_module
from edgecnn.compiler.tvm import frontend, library, pipelines
from edgecnn.compiler.tvm.bundle import compile_bundle
from edgecnn.compiler.tvm.errors import CompileError
from edgecnn.compiler.tvm.relax_helpers import call_tir_op, prim_funcs
from edgecnn.compiler.tvm.schedules import cpu
from edgecnn.runtime.bundle import Bundle
from edgecnn.targets import get_preset

RTOL = ATOL = 1e-4
ZOO = tuple(zoo.NAMES)


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """compiled(model, preset, **kw) -> CompileResult, built once per session."""
    cache = {}
    root = tmp_path_factory.mktemp("bundles")

    def get(model, preset, **kw):
        key = (model, preset, tuple(sorted(kw.items())))
        if key not in cache:
            out = root / f"{model}-{preset}-{len(cache)}"
            cache[key] = compile_bundle(model, preset, out, **kw)
        return cache[key]

    return get


def _needs_cross_compiler():
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ not found: apt-get install g++-aarch64-linux-gnu (make system-deps)")


def _golden(path):
    with np.load(path / "golden.npz", allow_pickle=False) as g:
        inputs = {k[len("input:"):]: g[k] for k in g.files if k.startswith("input:")}
        outputs = {k[len("output:"):]: g[k] for k in g.files if k.startswith("output:")}
    return inputs, outputs


# -- host: every zoo model runs and matches the NumPy backend ---------------------------------------

@pytest.mark.parametrize("name", ZOO)
def test_host_bundle_matches_numpy_backend(compiled, name):
    result = compiled(name, "host")
    inputs, _ = _golden(result.path)
    reference = numpy_backend.run(zoo.build(name), inputs)
    with Bundle.open(result.path) as bundle:
        outputs = bundle.run(inputs)
    assert set(outputs) == set(reference)
    for k in reference:
        assert outputs[k].shape == reference[k].shape
        assert outputs[k].dtype == np.float32
        np.testing.assert_allclose(outputs[k], reference[k], rtol=RTOL, atol=ATOL)
    # every conv of the bundle went through edgecnn's blocked rules (the Relax module the
    # CPU pipeline receives keeps conv2d a high-level op; legalized early it runs unblocked)
    conv_rules = {cpu.rule_of(f) for n, f in prim_funcs(result.relax_module).items() if "conv" in n}
    assert conv_rules and conv_rules <= {"BlockedConv", "WinogradConv"}, conv_rules


@pytest.mark.parametrize("name", ZOO)
def test_host_bundle_files_and_manifest(compiled, name):
    result = compiled(name, "host")
    path = result.path
    manifest = json.loads((path / "manifest.json").read_text())
    assert sorted(p.name for p in path.iterdir()) == ["golden.npz", "manifest.json", "model.onnx", "model.so"]
    for file, entry in manifest["files"].items():
        assert hashlib.sha256((path / file).read_bytes()).hexdigest() == entry["sha256"]
    graph = zoo.build(name)
    assert [i["name"] for i in manifest["inputs"]] == [s.name for s in graph.inputs]
    assert manifest["inputs"][0]["shape"] == list(graph.inputs[0].concrete(1))
    assert manifest["batch"] == 1
    assert manifest["target"]["preset"] == "host" and manifest["target"]["device"] == "cpu"
    assert manifest["target"]["tvm_target"]["kind"] == "llvm"
    assert manifest["golden"] == {"reference": "numpy", "rtol": 1e-4, "atol": 1e-4}
    assert manifest["tuning"] == {"applied": False, "records": 0, "trials": 0}
    assert manifest["versions"]["opset"] == 17 and manifest["versions"]["tvm"].startswith("0.27")
    # model.onnx is the exact model compiled: static batch, and onnxruntime reproduces the golden outputs.
    model = onnx.load(str(path / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    inputs, outputs = _golden(path)
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for n, value in zip(names, session.run(names, inputs)):
        np.testing.assert_allclose(outputs[n], value, rtol=RTOL, atol=ATOL)


def test_static_batch_is_compiled_and_recorded(compiled):
    result = compiled("lenet5", "host", batch=3)
    assert result.manifest["batch"] == 3 and result.manifest["inputs"][0]["shape"][0] == 3
    inputs, _ = _golden(result.path)
    assert inputs["input"].shape[0] == 3
    with Bundle.open(result.path) as bundle:
        outputs = bundle.run(inputs)
    reference = numpy_backend.run(zoo.build("lenet5"), inputs)
    for k in reference:
        np.testing.assert_allclose(outputs[k], reference[k], rtol=RTOL, atol=ATOL)


# -- constant folding: one build for all constant work ---------------------------------------------

def test_fold_constants_leaves_no_constant_only_call():
    source = frontend.resolve_model("resnet8")
    mod = frontend.to_relax(source.onnx_model)  # BatchNorm statistics are constant work before folding
    call_tir = call_tir_op()
    import tvm

    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if hasattr(value, "op") and value.op.same_as(call_tir):
                args = value.args[1].fields
                assert not all(isinstance(a, tvm.ir.expr.Constant) for a in args), binding.var.name_hint


# -- ONNX files: external models, importer fallback, errors ---------------------------------------

def _onnx_model(op_type, shape, attrs=None, out_shape=None, name="m"):
    graph = helper.make_graph(
        [helper.make_node(op_type, ["x"], ["y"], **(attrs or {}))], name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape or ["N", *shape[1:]])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_model_outside_the_ir_gets_onnxruntime_golden(tmp_path):
    # Sin is in TVM's importer but not in edgecnn's IR: the reference must come from onnxruntime.
    path = tmp_path / "sin.onnx"
    onnx.save(_onnx_model("Sin", [1, 3, 4, 4]), str(path))
    result = compile_bundle(path, "host", tmp_path / "bundle", batch=2)
    assert result.manifest["golden"]["reference"] == "onnxruntime"
    inputs, _ = _golden(result.path)
    expected = np.sin(inputs["x"])
    with Bundle.open(result.path) as bundle:
        np.testing.assert_allclose(bundle.run(inputs)["y"], expected, rtol=RTOL, atol=ATOL)


def test_unimportable_op_fails_cleanly_and_keeps_the_old_bundle(compiled, tmp_path):
    old = tmp_path / "bundle"
    shutil.copytree(compiled("digits-cnn", "host").path, old)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    path = tmp_path / "det.onnx"
    onnx.save(_onnx_model("Det", [1, 3, 3], out_shape=["N"]), str(path))
    with pytest.raises(CompileError, match="Det"):
        compile_bundle(path, "host", old)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "det.onnx"]  # no temporary left behind


def test_failure_while_writing_leaves_no_half_bundle(compiled, tmp_path, monkeypatch):
    old = tmp_path / "bundle"
    shutil.copytree(compiled("digits-cnn", "host").path, old)
    before = {p.name: p.read_bytes() for p in old.iterdir()}

    def broken_link(executable, preset, path):
        path.write_bytes(b"half a library")
        raise CompileError("linker crashed")

    monkeypatch.setattr(bundle_module, "export_library", broken_link)
    with pytest.raises(CompileError, match="linker crashed"):
        compile_bundle("digits-cnn", "host", old)
    with pytest.raises(CompileError):
        compile_bundle("digits-cnn", "host", tmp_path / "new")
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_dynamic_non_batch_dimension_is_an_input_error(tmp_path):
    from edgecnn.runtime.errors import InputError

    model = _onnx_model("Relu", [1, 3, 4, 4])
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InputError, match="dynamic dimension at axis 2"):
        compile_bundle(path, "host", tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


# -- aarch64: cross-linked ELF shared objects ------------------------------------------------------

def _elf_header(path):
    data = path.read_bytes()[:20]
    assert data[:4] == b"\x7fELF", "not an ELF file"
    elf_class, endian = data[4], data[5]
    e_type, e_machine = struct.unpack("<HH", data[16:20])
    return elf_class, endian, e_type, e_machine


EM_AARCH64, EM_X86_64, ET_DYN = 183, 62, 3


@pytest.mark.parametrize("preset", ["aarch64", "rpi4"])
def test_aarch64_bundles_are_aarch64_shared_objects(compiled, preset):
    _needs_cross_compiler()
    result = compiled("lenet5", preset)
    assert _elf_header(result.path / "model.so") == (2, 1, ET_DYN, EM_AARCH64)  # 64-bit, little endian
    assert result.manifest["target"]["arch"] == "aarch64"
    assert result.manifest["target"]["tvm_target"]["mtriple"] == "aarch64-linux-gnu"


def test_host_bundle_is_a_native_shared_object(compiled):
    arch = get_preset("host").arch
    expected = {"x86_64": EM_X86_64, "aarch64": EM_AARCH64}[arch]
    assert _elf_header(compiled("digits-cnn", "host").path / "model.so")[2:] == (ET_DYN, expected)


# -- CUDA: a GPU kernel for every conv and pool; the source compiles with nvcc ---------------------

GPU_CASES = [("cuda", name) for name in ZOO] + [("jetson-orin-nano", "lenet5"), ("jetson-orin-nano", "resnet8")]
POOL_OPS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}


def _called_prim_funcs(relax_module):
    call_tir = call_tir_op()
    names = []
    for block in relax_module["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if hasattr(value, "op") and value.op.same_as(call_tir):
                names.append(value.args[0].name_hint)
    return names


@pytest.mark.parametrize("preset,name", GPU_CASES)
def test_gpu_bundle_has_a_kernel_for_every_conv_and_pool(compiled, preset, name):
    if get_preset(preset).cross_compiler:
        _needs_cross_compiler()
    result = compiled(name, preset)
    kernels = library.cuda_kernel_names(library.cuda_source(result.library))
    called = _called_prim_funcs(result.relax_module)
    for fn in called:
        assert any(k == f"{fn}_kernel" or k.startswith(f"{fn}_kernel_") for k in kernels), \
            f"{fn} has no CUDA kernel (it would run on the host CPU)"
    model = onnx.load(str(result.path / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert sum("conv2d" in fn for fn in called) == ops.count("Conv")
    assert sum(bool(re.search(r"pool|mean", fn)) for fn in called) >= sum(op in POOL_OPS for op in ops)
    library_bytes = (result.path / "model.so").read_bytes()
    assert all(k.encode() in library_bytes for k in kernels), "the bundle's model.so lacks the kernels"
    expected_machine = {"x86_64": EM_X86_64, "aarch64": EM_AARCH64}[get_preset(preset).arch]
    assert _elf_header(result.path / "model.so")[3] == expected_machine


@pytest.mark.parametrize("preset,name", [("cuda", "resnet8"), ("jetson-orin-nano", "lenet5")])
def test_gpu_source_compiles_with_nvcc(compiled, tmp_path, preset, name):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: install the CUDA toolkit to check the generated CUDA source")
    if get_preset(preset).cross_compiler:
        _needs_cross_compiler()
    result = compiled(name, preset)
    source = tmp_path / "kernels.cu"
    source.write_text(library.cuda_source(result.library))
    arch = get_preset(preset).cuda_arch
    proc = subprocess.run([nvcc, "-cubin", f"-arch={arch}", "-w", "-o", str(tmp_path / "k.cubin"), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "k.cubin").stat().st_size > 0


def test_unscheduled_gpu_function_is_refused():
    from tvm import relax

    preset = get_preset("cuda")
    mod = frontend.to_relax(frontend.resolve_model("digits-cnn").onnx_model)
    target = preset.target()
    with target:
        fused = relax.get_pipeline("zero")(mod)  # no GPU rules: nothing is bound to threads
    with pytest.raises(CompileError, match="no GPU schedule"):
        pipelines.check_gpu_scheduled(fused, preset)
    with target:
        pipelines.check_gpu_scheduled(pipelines.gpu_pipeline(target)(mod), preset)


# -- the nine `light` models: ResNet-50 here, all nine in bench/light_models.py ---------------------
# Compile time is a figure, not a test: wall-clock bounds fail on a loaded shared machine.
# bench/light_models.py reports each model's compile seconds (`compile_s`).


@pytest.mark.slow
def test_resnet50_bundle_uses_blocked_kernels_and_matches_onnxruntime(tmp_path):
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"
    result = compile_bundle(path, "host", tmp_path / "resnet50")
    # the bundle carries edgecnn's blocked kernels, not TVM's unblocked fallback
    rules = {cpu.rule_of(f) for f in prim_funcs(result.relax_module).values()}
    assert {"BlockedConv", "WinogradConv"} <= rules, rules
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(result.path / "model.onnx"), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.random.default_rng(3).standard_normal([1, 3, 224, 224]).astype(np.float32)
             for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, feeds)))
    with Bundle.open(result.path) as bundle:
        outputs = bundle.run(feeds)
    for n in names:
        np.testing.assert_allclose(outputs[n], expected[n], rtol=RTOL, atol=ATOL)
