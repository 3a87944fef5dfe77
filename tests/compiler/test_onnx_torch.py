"""The zoo architectures written as ordinary PyTorch modules, exported by ``torch.onnx.export``,
imported by edgecnn and run by the NumPy backend, must match PyTorch.

The modules are idiomatic (``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d``, ``nn.ReLU6``,
``nn.AdaptiveAvgPool2d``, ``nn.Flatten``) so the ONNX is what a PyTorch user's model exports to.
They get their weights from the edgecnn graph, and the shared ``torch_mirror`` fixture (a
functional transcription of the graph) checks that they compute the graph's function before
their export is tested.
"""
import io

import numpy as np
import pytest

from edgecnn.compiler import numpy_backend, onnx_io, zoo

torch = pytest.importorskip("torch", reason="PyTorch is an optional test peer (pip install torch==2.13.0)")
nn = torch.nn


def _t(array):
    return torch.tensor(np.array(array), dtype=torch.float32)


def _conv(node, graph):
    a = graph.ops[node.name].attrs
    w = graph.params[node.inputs[1]]
    x_shape = graph.shapes[node.inputs[0]]
    _, strides, dilations, pads, _ = graph.ops[node.name].geometry(x_shape, tuple(w.shape[2:]))
    symmetric = pads[0] == pads[2] and pads[1] == pads[3]
    conv = nn.Conv2d(w.shape[1] * a["group"], w.shape[0], tuple(w.shape[2:]), stride=tuple(strides),
                     padding=(pads[0], pads[1]) if symmetric else 0, dilation=tuple(dilations),
                     groups=a["group"], bias=len(node.inputs) > 2)
    with torch.no_grad():
        conv.weight.copy_(_t(w))
        if len(node.inputs) > 2:
            conv.bias.copy_(_t(graph.params[node.inputs[2]]))
    if symmetric:
        return conv
    return nn.Sequential(nn.ZeroPad2d((pads[1], pads[3], pads[0], pads[2])), conv)


def _linear(node, graph):
    a = graph.ops[node.name].attrs
    assert a["transB"] == 1 and a["transA"] == 0 and a["alpha"] == a["beta"] == 1.0
    w = graph.params[node.inputs[1]]
    layer = nn.Linear(w.shape[1], w.shape[0], bias=len(node.inputs) > 2)
    with torch.no_grad():
        layer.weight.copy_(_t(w))
        if len(node.inputs) > 2:
            layer.bias.copy_(_t(graph.params[node.inputs[2]]))
    return layer


def _batchnorm(node, graph):
    scale, bias, mean, var = (graph.params[i] for i in node.inputs[1:])
    bn = nn.BatchNorm2d(len(scale), eps=graph.ops[node.name].attrs["epsilon"])
    with torch.no_grad():
        bn.weight.copy_(_t(scale))
        bn.bias.copy_(_t(bias))
        bn.running_mean.copy_(_t(mean))
        bn.running_var.copy_(_t(var))
    return bn


def _maxpool(node, graph):
    op = graph.ops[node.name]
    kernel, strides, dilations, pads, _ = op.geometry(graph.shapes[node.inputs[0]])
    assert pads[0] == pads[2] and pads[1] == pads[3]
    return nn.MaxPool2d(tuple(kernel), tuple(strides), (pads[0], pads[1]), tuple(dilations),
                        ceil_mode=bool(op.attrs["ceil_mode"]))


def _clip(node, graph):
    a = graph.ops[node.name].attrs
    return nn.ReLU6() if (a["min"], a["max"]) == (0.0, 6.0) else nn.Hardtanh(a["min"], a["max"])


class _Sum(nn.Module):
    def forward(self, a, b):
        return a + b


#: the zoo's op types -> the idiomatic PyTorch module for one node
MODULES = {
    "Conv": _conv,
    "Gemm": _linear,
    "BatchNormalization": _batchnorm,
    "MaxPool": _maxpool,
    "Clip": _clip,
    "Relu": lambda node, graph: nn.ReLU(),
    "GlobalAveragePool": lambda node, graph: nn.AdaptiveAvgPool2d(1),
    "Flatten": lambda node, graph: nn.Flatten(graph.ops[node.name].attrs["axis"]),
    "Add": lambda node, graph: _Sum(),
}


class Idiomatic(nn.Module):
    """The graph's DAG with one standard module per node."""

    def __init__(self, graph):
        super().__init__()
        self.graph = graph
        self.layers = nn.ModuleList(MODULES[n.op_type](n, graph) for n in graph.nodes)

    def forward(self, x):
        values = {self.graph.inputs[0].name: x}
        for node, layer in zip(self.graph.nodes, self.layers):
            values[node.outputs[0]] = layer(*(values[i] for i in node.inputs if i not in self.graph.params))
        return values[self.graph.outputs[0]]


def test_the_zoo_needs_no_other_modules():
    used = {n.op_type for name in zoo.NAMES for n in zoo.build(name).nodes}
    assert used <= set(MODULES), sorted(used - set(MODULES))


# Constant folding fuses eval-mode BatchNorm into the Conv; without it BatchNormalization and the
# Identity nodes of shared weights reach the importer.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name, folding", [(n, True) for n in zoo.NAMES]
                         + [("resnet8", False), ("mobilenet-tiny", False)])
def test_torch_export_of_the_zoo_imports_and_matches_pytorch(name, folding, torch_mirror, rng, randomized):
    graph = randomized(zoo.build(name))
    module = Idiomatic(graph).eval()
    (spec,) = graph.inputs
    x = rng.standard_normal(spec.concrete(2)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
        mirrored = torch_mirror(graph).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(want, mirrored, rtol=1e-5, atol=1e-5)  # the module is the graph

    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.from_numpy(x),), buffer, dynamo=False, opset_version=17,
                      do_constant_folding=folding,
                      input_names=["pixels"], output_names=["scores"],
                      dynamic_axes={"pixels": {0: "batch"}, "scores": {0: "batch"}})
    imported = onnx_io.import_model(buffer.getvalue())
    has_bn = any(n.op_type == "BatchNormalization" for n in graph.nodes)
    assert any(n.op_type == "BatchNormalization" for n in imported.nodes) == (has_bn and not folding)
    assert [s.name for s in imported.inputs] == ["pixels"] and imported.outputs == ["scores"]
    assert isinstance(imported.inputs[0].shape[0], str)
    for batch in (2, 5):
        xb = rng.standard_normal(spec.concrete(batch)).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(xb)).numpy()
        got = numpy_backend.run(imported, {"pixels": xb})["scores"]
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # and edgecnn's re-export of the imported graph computes the same under onnxruntime
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_io.export_model(imported).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["scores"], {"pixels": xb})[0], expected, rtol=1e-5, atol=1e-5)
