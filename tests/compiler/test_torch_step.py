"""One training step of every zoo model against PyTorch autograd from identical weights.

The NumPy backend's loss, every parameter gradient, the SGD update (momentum, weight decay) and
BatchNorm's running statistics are compared with the same graph run by ``torch_mirror``
(functional PyTorch, an independent implementation) and ``torch.optim.SGD``. Two steps are
taken so the momentum buffer's second use is covered too.
"""
import copy

import numpy as np
import pytest

from edgecnn.compiler import zoo
from edgecnn.compiler.ops.base import RunContext
from edgecnn.compiler.train import SGD, TrainConfig, apply_state_updates, loss_and_gradients

BATCH = {"digits-cnn": 16, "lenet5": 8, "vgg-small": 4, "resnet8": 4, "mobilenet-tiny": 2}
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
# float32 on both sides with different summation orders: agreement to 1e-5 relative to each
# tensor's scale (plus 1e-5 absolute) is the criterion.
TOL = 1e-5


def assert_close(name, ours, theirs, tol=TOL):
    assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
    assert ours.dtype == np.float32, (name, ours.dtype)
    scale = max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(ours.astype(np.float64) - theirs).max())
    assert err <= tol * scale, f"{name}: max abs error {err:.3g} > {tol * scale:.3g}"


@pytest.mark.parametrize("name", zoo.NAMES)
def test_sgd_steps_match_pytorch(name, torch_mirror):
    import torch

    torch.manual_seed(0)
    graph = zoo.build(name, seed=3)
    rng = np.random.default_rng(7)
    n = BATCH[name]
    x = rng.standard_normal((n, *graph.inputs[0].shape[1:])).astype(np.float32)
    labels = rng.integers(0, 10, size=n)

    module = torch_mirror(graph)
    module.train()
    opt = torch.optim.SGD(list(module.weights), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    ours_opt = SGD(momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    config = TrainConfig(optimizer="sgd", lr=LR)
    for step in range(2):
        ctx = RunContext(training=True, need_grad=True)
        loss, logits, grads = loss_and_gradients(graph, x, labels, config, ctx=ctx)

        opt.zero_grad()
        out = module(torch.from_numpy(x))
        ref_loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(labels))
        ref_loss.backward()

        assert abs(loss - ref_loss.item()) <= TOL * max(1.0, abs(ref_loss.item())), (step, loss, ref_loss.item())
        assert_close(f"step {step} logits", logits, out.detach().numpy())
        assert sorted(grads) == sorted(n for n, t in module.tensors.items() if t.requires_grad)
        for pname, g in grads.items():
            assert_close(f"step {step} grad {pname}", g, module.tensors[pname].grad.numpy())

        apply_state_updates(graph, ctx)
        ours_opt.step(graph.params, grads, LR)
        opt.step()
        for pname, value in graph.params.items():
            assert_close(f"step {step} updated {pname}", value, module.tensors[pname].detach().numpy())


def _one_sgd_step(net, path, x, labels, dtype):
    """(edgecnn's updated parameters, PyTorch's) after one SGD step in ``dtype`` from the same
    weights: the ONNX file ``path`` imported and trained by edgecnn, ``net`` by torch.optim.SGD."""
    import torch

    from edgecnn.compiler.onnx_io import import_model

    graph = import_model(path)
    graph.params = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in graph.params.items()}
    ctx = RunContext(training=True, need_grad=True)
    _, _, grads = loss_and_gradients(graph, x.astype(dtype), labels, TrainConfig(optimizer="sgd", lr=LR),
                                     ctx=ctx, dtype=dtype)
    apply_state_updates(graph, ctx)
    SGD(momentum=MOMENTUM, weight_decay=WEIGHT_DECAY).step(graph.params, grads, LR)

    torch_dtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    module = copy.deepcopy(net).to(torch_dtype).train()
    opt = torch.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(x).to(torch_dtype)), torch.from_numpy(labels))
    loss.backward()
    opt.step()
    theirs = {k: v.detach().double().numpy() for k, v in module.state_dict().items()}
    return {k: v for k, v in graph.params.items() if k in theirs}, theirs


def test_sgd_step_of_an_imported_torchvision_resnet18_matches_pytorch(tmp_path, torchvision_models):
    """torchvision's ResNet-18 exported by PyTorch (BatchNorm kept as nodes), imported, and
    trained one step by edgecnn: every updated weight and running mean matches torch.optim.SGD on
    the same module in training mode to 1e-5 in float64 arithmetic on both sides; in float32 each
    side's rounding error (against float64) is of the same size.

    float64 is where the comparison is exact: with a batch of 4, training-mode BatchNorm
    amplifies float32 rounding to ~5e-5 of a weight's scale in PyTorch itself (measured here)."""
    import torch

    torch.manual_seed(0)
    net = torchvision_models.resnet18(num_classes=10).eval()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, size=4)
    path = tmp_path / "resnet18.onnx"
    # Without constant folding the exporter keeps BatchNormalization as nodes (it would fold them
    # into the convs), and the initializers keep PyTorch's parameter names.
    torch.onnx.export(net, (torch.from_numpy(x),), str(path), dynamo=False, opset_version=17,
                      do_constant_folding=False, input_names=["image"], dynamic_axes={"image": {0: "N"}})
    before = {k: v.detach().double().numpy() for k, v in net.state_dict().items()}
    ours64, theirs64 = _one_sgd_step(net, path, x, labels, np.float64)
    ours32, theirs32 = _one_sgd_step(net, path, x, labels, np.float32)
    assert len(ours64) == len([k for k in before if not k.endswith("num_batches_tracked")]), \
        sorted(set(before) - set(ours64))

    for name in ours64:
        if name.endswith("running_var"):
            continue
        scale = max(1.0, float(np.abs(theirs64[name]).max()))
        assert np.abs(ours64[name] - theirs64[name]).max() <= 1e-5 * scale, name
        ours_err = np.abs(ours32[name] - theirs64[name]).max()
        torch_err = np.abs(theirs32[name] - theirs64[name]).max()
        assert ours_err <= 3 * torch_err + 1e-6 * scale, (name, ours_err, torch_err)
    # The one documented difference: ONNX's BatchNormalization (edgecnn) moves the running variance
    # towards the batch's population variance, PyTorch towards its unbiased estimate. Undoing the
    # momentum on both sides, they differ by exactly Bessel's factor n / (n - 1).
    momentum = 0.9  # PyTorch's 0.1, as its exporter writes it into the node
    for name in (n for n in ours64 if n.endswith("running_var")):
        count = x.shape[0] * _batchnorm_input_pixels(net, name.rsplit(".", 1)[0], x)
        ours = (ours64[name] - momentum * before[name]) / (1 - momentum)
        theirs = (theirs64[name] - momentum * before[name]) / (1 - momentum)
        assert np.abs(ours * count / (count - 1) - theirs).max() <= 1e-6 * max(1.0, np.abs(theirs).max()), name


def _batchnorm_input_pixels(net, bn_name, x):
    """Spatial size (H * W) of what the BatchNorm module ``bn_name`` normalised for input ``x``."""
    import torch

    seen = {}

    def record(module, inputs, out):  # returns None: the hook must not replace the output
        seen["hw"] = out.shape[2] * out.shape[3]

    handle = net.get_submodule(bn_name).register_forward_hook(record)
    try:
        with torch.no_grad():
            net.eval()(torch.from_numpy(x))
    finally:
        handle.remove()
    return seen["hw"]
