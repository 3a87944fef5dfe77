"""torchvision's architectures, exported from PyTorch with random weights, run exactly as a user
types it (``edgecnn run model.onnx --backend B --input x.npy -o out.npz``) and compared with
PyTorch's own output: rtol 1e-4, atol 1e-4 x the output's magnitude.

The exports are the real torchvision definitions (bench/torchvision_zoo.py), at small inputs so
CI stays inside its time; bench/torchvision_models.py runs them at 224x224.
"""
import numpy as np
import pytest
import torchvision_zoo  # bench/, put on the path by tests/compiler/conftest.py

from edgecnn.compiler.cli import main

NAMES = sorted(torchvision_zoo.ARCHITECTURES)
# The biggest compiles; the rest of the zoo keeps the TVM road covered in the default tier.
SLOW_ON_TVM = {"alexnet", "vgg11_bn", "inception_v3", "resnext50_32x4d", "convnext_tiny", "densenet121"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, torchvision_models):
    root = tmp_path_factory.mktemp("torchvision")
    cache = {}

    def get(name):
        if name not in cache:
            path = root / f"{name}.onnx"
            x, want = torchvision_zoo.export(torchvision_zoo.build(name), torchvision_zoo.ARCHITECTURES[name], path)
            np.save(root / f"{name}.x.npy", x)
            cache[name] = path, root / f"{name}.x.npy", want
        return cache[name]

    return get


def _run_and_compare(capsys, tmp_path, exported, name, backend):
    model, x, want = exported(name)
    out = tmp_path / "out.npz"
    code = main(["run", str(model), "--backend", backend, "--input", str(x), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    with np.load(out) as outputs:
        got = outputs[outputs.files[0]]
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("name", NAMES)
def test_architecture_matches_pytorch_on_the_numpy_backend(name, exported, capsys, tmp_path):
    _run_and_compare(capsys, tmp_path, exported, name, "numpy")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ON_TVM else n
                                  for n in NAMES])
def test_architecture_matches_pytorch_compiled_for_this_cpu(name, exported, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _run_and_compare(capsys, tmp_path, exported, name, "tvm")


def test_a_dynamic_batch_shufflenet_runs_on_the_numpy_backend(tmp_path, capsys, torchvision_models):
    """Exported with a symbolic batch, ShuffleNetV2's channel shuffle reads the batch from Shape:
    the reshape targets become "copy the batch" constants, so the IR runs any batch."""
    import torch

    net = torchvision_zoo.build("shufflenet_v2_x1_0")
    path = tmp_path / "shufflenet.onnx"
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.onnx.export(net, (x[:1],), str(path), dynamo=False, opset_version=17, input_names=["image"],
                      dynamic_axes={"image": {0: "N"}})
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["run", str(path), "--backend", "numpy", "--input", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "y.npz")]) == 0, capsys.readouterr().err
    with np.load(tmp_path / "y.npz") as out, torch.no_grad():
        want = net(x).numpy()
        np.testing.assert_allclose(out[out.files[0]], want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))
