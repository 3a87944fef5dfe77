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
