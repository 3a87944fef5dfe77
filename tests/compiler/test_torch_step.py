"""One training step of every zoo model against PyTorch autograd from identical weights.

The NumPy backend's loss, every parameter gradient, the SGD update (momentum, weight decay) and
BatchNorm's running statistics are compared with the same graph run by ``torch_mirror``
(functional PyTorch, an independent implementation) and ``torch.optim.SGD``. Two steps are
taken so the momentum buffer's second use is covered too.
"""
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
