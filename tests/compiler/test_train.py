"""Losses, optimizers, schedules and the training loop (checkpoints, resume, divergence, CLI)."""
import json
import math

import numpy as np
import pytest

from edgecnn.compiler import train as T
from edgecnn.compiler import zoo
from edgecnn.compiler.cli import main
from edgecnn.compiler.data import load_dataset
from edgecnn.compiler.serialize import load_model
from edgecnn.runtime.errors import InputError


# -- losses -----------------------------------------------------------------------------------
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_gradient_matches_finite_differences(smoothing, numeric_gradient):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    _, grad = T.softmax_cross_entropy(logits, labels, smoothing)
    expected = numeric_gradient(lambda z: T.softmax_cross_entropy(z, labels, smoothing)[0], logits.copy())
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-9)


def test_cross_entropy_hand_value_and_stability():
    # Two equal logits: loss log(2) for either label, whatever the common offset.
    for offset in (0.0, 1e4, -1e4):
        logits = np.array([[offset, offset]], np.float32)
        loss, grad = T.softmax_cross_entropy(logits, np.array([0]))
        assert grad.dtype == np.float32
        assert loss == pytest.approx(math.log(2), rel=1e-6)
        np.testing.assert_allclose(grad, [[-0.5, 0.5]], atol=1e-7)
    # A confident wrong answer: loss is the logit gap, not inf from log(0).
    loss, _ = T.softmax_cross_entropy(np.array([[1000.0, 0.0]], np.float32), np.array([1]))
    assert loss == pytest.approx(1000.0, rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_torch(smoothing):
    torch = pytest.importorskip("torch", reason="PyTorch is an optional test peer")
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 10)).astype(np.float32) * 3
    labels = rng.integers(0, 10, 6)
    t = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.tensor(labels), label_smoothing=smoothing)
    ref.backward()
    loss, grad = T.softmax_cross_entropy(logits, labels, smoothing)
    assert loss == pytest.approx(ref.item(), rel=1e-6)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_mse_value_and_gradient(numeric_gradient):
    pred = np.array([[1.0, 2.0], [3.0, 5.0]])
    target = np.array([[1.0, 0.0], [0.0, 1.0]])
    loss, grad = T.mean_squared_error(pred, target)
    assert loss == pytest.approx((0 + 4 + 9 + 16) / 4)
    expected = numeric_gradient(lambda p: T.mean_squared_error(p, target)[0], pred.copy())
    np.testing.assert_allclose(grad, expected, rtol=1e-7)


# -- optimizers -------------------------------------------------------------------------------
def test_sgd_closed_form_two_steps():
    p = {"w": np.array([1.0, -2.0], np.float32)}
    g = np.array([0.5, 0.25], np.float32)
    opt = T.SGD(momentum=0.9, weight_decay=0.1)
    opt.step(p, {"w": g.copy()}, lr=0.1)
    d1 = g + 0.1 * np.array([1.0, -2.0])
    p1 = np.array([1.0, -2.0]) - 0.1 * d1
    np.testing.assert_allclose(p["w"], p1, rtol=1e-6)
    opt.step(p, {"w": g.copy()}, lr=0.1)
    d2 = g + 0.1 * p1
    buf = 0.9 * d1 + d2
    np.testing.assert_allclose(p["w"], p1 - 0.1 * buf, rtol=1e-6)


def test_adam_first_step_is_lr_times_sign():
    p = {"w": np.array([0.0, 0.0, 0.0], np.float32)}
    opt = T.Adam()
    opt.step(p, {"w": np.array([3.0, -0.01, 2e-3], np.float32)}, lr=0.01)
    # m_hat = g and v_hat = g^2 after one step, so the update is lr * g / (|g| + eps).
    np.testing.assert_allclose(p["w"], [-0.01, 0.01, -0.01], rtol=1e-4)


@pytest.mark.parametrize("name,kwargs,torch_name,torch_kwargs", [
    ("sgd", {"momentum": 0.9, "weight_decay": 1e-2}, "SGD", {"momentum": 0.9, "weight_decay": 1e-2}),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}, "SGD",
     {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    ("sgd", {"momentum": 0.0}, "SGD", {}),
    ("adam", {"weight_decay": 1e-2}, "Adam", {"weight_decay": 1e-2}),
    ("adamw", {"weight_decay": 1e-1}, "AdamW", {"weight_decay": 1e-1}),
])
def test_optimizers_match_torch(name, kwargs, torch_name, torch_kwargs):
    torch = pytest.importorskip("torch", reason="PyTorch is an optional test peer")
    rng = np.random.default_rng(2)
    init = rng.standard_normal((3, 4)).astype(np.float32)
    params = {"w": init.copy()}
    ours = T.OPTIMIZERS[name](**kwargs)
    tp = torch.nn.Parameter(torch.tensor(init))
    theirs = getattr(torch.optim, torch_name)([tp], lr=0.03, **torch_kwargs)
    for step in range(6):
        g = rng.standard_normal((3, 4)).astype(np.float32)
        ours.step(params, {"w": g}, lr=0.03)
        tp.grad = torch.tensor(g)
        theirs.step()
        np.testing.assert_allclose(params["w"], tp.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
    assert params["w"].dtype == np.float32


def test_optimizer_state_round_trips():
    rng = np.random.default_rng(3)
    grads = [{"w": rng.standard_normal(4).astype(np.float32)} for _ in range(4)]
    a_params, b_params = {"w": np.ones(4, np.float32)}, {"w": np.ones(4, np.float32)}
    a = T.Adam()
    for g in grads:
        a.step(a_params, g, 0.1)
    b = T.Adam()
    for g in grads[:2]:
        b.step(b_params, g, 0.1)
    restored = T.Adam()
    restored.load_state_arrays({k: v.copy() for k, v in b.state_arrays().items()})
    for g in grads[2:]:
        restored.step(b_params, g, 0.1)
    np.testing.assert_array_equal(a_params["w"], b_params["w"])


# -- schedules --------------------------------------------------------------------------------
def test_schedules():
    cos = T.make_schedule("cosine", 0.1, total_steps=100, steps_per_epoch=10)
    assert cos(0) == pytest.approx(0.1)
    assert cos(50) == pytest.approx(0.05)
    assert cos(100) == pytest.approx(0.0, abs=1e-12)
    step = T.make_schedule("step", 0.1, total_steps=90, steps_per_epoch=10, step_epochs=3, gamma=0.5)
    assert [step(s) for s in (0, 29, 30, 60)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    warm = T.make_schedule("constant", 0.2, total_steps=100, steps_per_epoch=10, warmup_steps=4)
    assert [warm(s) for s in range(6)] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    warm_cos = T.make_schedule("cosine", 0.2, total_steps=14, steps_per_epoch=7, warmup_steps=4)
    assert warm_cos(4) == pytest.approx(0.2) and warm_cos(9) == pytest.approx(0.1)
    with pytest.raises(InputError, match="unknown schedule"):
        T.make_schedule("linear", 0.1, 10, 1)


def test_config_rejects_bad_values():
    with pytest.raises(InputError, match="optimizer"):
        T.TrainConfig(optimizer="rmsprop")
    with pytest.raises(InputError, match="learning rate"):
        T.TrainConfig(lr=-1.0)
    assert T.TrainConfig(optimizer="adam").lr == T.DEFAULT_LR["adam"]


# -- the loop ---------------------------------------------------------------------------------
def test_overfits_a_tiny_batch():
    graph = zoo.build("digits-cnn", seed=0)
    data = load_dataset("digits", seed=0)
    idx = data.split.train[:32]
    x, y = data.batch(idx), data.y[idx]
    config = T.TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0)
    opt = config.make_optimizer()
    first = None
    for _ in range(60):
        loss, logits, grads = T.loss_and_gradients(graph, x, y, config)
        first = loss if first is None else first
        opt.step(graph.params, grads, config.lr)
    loss, logits, _ = T.loss_and_gradients(graph, x, y, config)
    assert first > 1.0
    assert loss < 0.02
    assert np.mean(logits.argmax(axis=1) == y) == 1.0


def small_digits(tmp_path, n=500):
    """A 500-sample slice of digits as a user .npz file (so a resumed run reloads the same data)."""
    path = tmp_path / "digits_small.npz"
    if not path.exists():
        full = load_dataset("digits")
        # digits pixels are 0..16; x15 keeps them exact in uint8.
        np.savez(path, x=(full.x[:n] * 15).astype(np.uint8), y=full.y[:n])
    return str(path)


def with_dropout(seed=0):
    from edgecnn.compiler.layers import Conv2d, Dense, Dropout, Flatten, ReLU, Sequential

    return Sequential([Conv2d(8, 3, padding="same"), ReLU(), Dropout(0.3), Flatten(), Dense(10)],
                      input_shape=(1, 8, 8), name="dropout-net", seed=seed).build()


def _small_trainer(tmp_path, epochs=2, seed=0, model="digits-cnn", **overrides):
    spec = small_digits(tmp_path)
    data = load_dataset(spec, seed=seed)
    config = T.TrainConfig(epochs=epochs, batch_size=32, seed=seed, **overrides)
    graph = with_dropout(seed) if model == "with-dropout" else zoo.build(model, seed=seed)
    return T.Trainer(graph, data, config, dataset_spec=spec)


def test_fit_writes_run_directory(tmp_path):
    trainer = _small_trainer(tmp_path, epochs=2)
    result = trainer.fit(tmp_path, progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_accuracy"] == result["test_accuracy"] > 0.5
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    for h in metrics["history"]:
        assert set(h) == {"epoch", "loss", "train_accuracy", "val_accuracy", "seconds", "lr"}
    assert metrics["history"][1]["loss"] < metrics["history"][0]["loss"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = load_model(tmp_path / "model")
    pre = model.metadata["preprocessing"]
    data = trainer.data
    pixels = data.pixel01(data.split.train).astype(np.float64)
    assert pre["mean"] == pytest.approx([pixels.mean()], rel=1e-5)
    assert pre["std"] == pytest.approx([pixels.std()], rel=1e-5)
    assert model.metadata["labels"] == [str(d) for d in range(10)]
    ckpt = json.loads((tmp_path / "checkpoint" / "trainer.json").read_text())
    assert ckpt["epochs_done"] == 2


@pytest.mark.parametrize("model", ["digits-cnn", "with-dropout"])
def test_resume_matches_an_uninterrupted_run(tmp_path, model):
    whole = _small_trainer(tmp_path, epochs=2, model=model)
    whole.fit(tmp_path / "whole", progress=False)

    interrupted = _small_trainer(tmp_path, epochs=2, model=model)
    original = interrupted.write_checkpoint

    def stop_after_first(run_dir):
        original(run_dir)
        raise KeyboardInterrupt

    interrupted.write_checkpoint = stop_after_first
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(tmp_path / "cut", progress=False)
    resumed = T.Trainer.resume(tmp_path / "cut")
    assert resumed.epochs_done == 1
    resumed.fit(tmp_path / "cut", progress=False)
    for name, value in whole.graph.params.items():
        np.testing.assert_array_equal(resumed.graph.params[name], value, err_msg=name)
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["test_accuracy"] == b["test_accuracy"]


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = _small_trainer(tmp_path, epochs=1)
    trainer.fit(tmp_path, progress=False)
    saved = load_model(tmp_path / "checkpoint" / "model")
    trainer.config.epochs = 2
    trainer.lr_at = lambda step: 1e30  # a learning rate no loss survives
    with pytest.raises(T.TrainingDivergedError, match=r"epoch 2, step \d+.*last good checkpoint \(epoch 1\)"):
        trainer.fit(tmp_path, progress=False)
    kept = load_model(tmp_path / "checkpoint" / "model")
    for name, value in saved.params.items():
        np.testing.assert_array_equal(kept.params[name], value)
    assert json.loads((tmp_path / "checkpoint" / "trainer.json").read_text())["epochs_done"] == 1
    assert "stopped" in json.loads((tmp_path / "metrics.json").read_text())


def test_cli_train_json_and_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", "digits-cnn", "--dataset", "digits", "--epochs", "1", "--batch-size", "128",
                 "--threads", "1", "--optimizer", "adam", "--lr", "0.003", "--seed", "1", "--json", "-o", str(run_dir)])
    out, err = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)
    assert {"test_accuracy", "epochs", "seconds"} <= set(doc)
    assert doc["epochs"] == 1 and doc["test_accuracy"] > 0.6
    assert "epoch 1/1" in err
    code = main(["train", "--resume", str(run_dir), "--epochs", "2", "--json", "--quiet"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["epochs"] == 2


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "digits-cnn", "--dataset", "nope", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown dataset 'nope'" in err and "\n" not in err
    assert main(["train", "lenet5", "--dataset", "digits", "-o", str(tmp_path / "r")]) == 2
    assert "(1, 28, 28)" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_fine_tune_saved_and_onnx_models(tmp_path, capsys):
    from edgecnn.compiler.onnx_io import save_onnx

    spec = small_digits(tmp_path)
    first = tmp_path / "first"
    assert main(["train", "digits-cnn", "--dataset", spec, "--epochs", "3", "--batch-size", "16", "--json",
                 "--quiet", "-o", str(first)]) == 0
    trained = load_model(first / "model")
    capsys.readouterr()
    # A saved model keeps the normalisation it was trained with, even on other data.
    second = tmp_path / "second"
    assert main(["train", str(first / "model"), "--dataset", "digits", "--epochs", "1", "--json", "--quiet",
                 "-o", str(second)]) == 0
    doc = json.loads(capsys.readouterr().out)
    tuned = load_model(second / "model")
    assert tuned.metadata["preprocessing"] == trained.metadata["preprocessing"]
    assert doc["test_accuracy"] > 0.8
    # An ONNX file trains too (fine-tuning an imported model).
    save_onnx(trained, tmp_path / "m.onnx")
    third = tmp_path / "third"
    assert main(["train", str(tmp_path / "m.onnx"), "--dataset", spec, "--epochs", "1", "--batch-size", "16",
                 "--lr", "0.01", "--json", "--quiet", "-o", str(third)]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] > 0.8
    from_onnx = load_model(third / "model")
    changed = [k for k in trained.params if not np.array_equal(trained.params[k], from_onnx.params[k])]
    assert changed, "training from the ONNX file left every weight unchanged"
