"""Training with the NumPy reference backend: losses, optimizers, schedules, the loop, checkpoints.

The loop is deliberately plain: per step a forward pass in training mode keeping each op's
cache, the loss and its gradient with respect to the logits, the backend's reverse walk for the
parameter gradients, then one optimizer update applied in place to the float32 parameters.

Every random choice comes from generators seeded with ``(seed, epoch)`` rather than from one that
runs on across epochs, so a run resumed from its last checkpoint (an epoch boundary) takes exactly
the steps an uninterrupted run would have taken (same shuffles, same dropout masks) and ends with
the same weights.

A run directory holds:

- ``checkpoint/``: ``model/`` (a saved model), ``optimizer.npz`` and ``trainer.json``, replaced as a
  whole after every epoch (written beside it, then renamed), so it is always one consistent epoch;
- ``metrics.json``: per epoch ``epoch, loss, train_accuracy, val_accuracy, seconds, lr``, then
  ``test_accuracy`` when training finished;
- ``model/``: the final saved model, with ``labels`` and ``preprocessing`` in its metadata;
- ``curves.png``: loss and accuracies per epoch.
"""
from __future__ import annotations

import abc
import json
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.runtime.errors import EdgeCNNError, InputError

from . import numpy_backend
from .data import Dataset, load_dataset
from .fileio import atomic_dir, atomic_path, write_text
from .ir import Graph
from .ops.base import RunContext
from .serialize import load_model, save_model

CHECKPOINT_FORMAT = 1


class TrainingDivergedError(EdgeCNNError):
    """The loss became NaN or infinite; the last good checkpoint is left in place."""


# -- losses -----------------------------------------------------------------------------------
def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, and d loss / d logits.

    Computed through log-softmax with the row maximum subtracted, so large logits neither
    overflow nor lose the loss to ``log(0)``. With label smoothing ``e`` the target is
    ``(1 - e) * onehot + e / K`` (PyTorch's definition). The gradient is
    ``(softmax(logits) - target) / N``.
    """
    n, k = logits.shape
    if labels.shape != (n,):
        raise InputError(f"labels must be one integer per row of logits. Received: logits={logits.shape}, "
                         f"labels={labels.shape}")
    if not 0.0 <= label_smoothing < 1.0:
        raise InputError(f"label_smoothing must be in [0, 1). Received: label_smoothing={label_smoothing}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_probs = shifted - np.log(sum_exp)
    target = np.full((n, k), label_smoothing / k, dtype=logits.dtype)
    target[np.arange(n), labels] += 1.0 - label_smoothing
    loss = -(target * log_probs).sum() / n
    grad = (exp / sum_exp - target) / n
    return float(loss), grad.astype(logits.dtype, copy=False)


def mean_squared_error(predictions: np.ndarray, targets: np.ndarray):
    """``mean((predictions - targets) ** 2)`` over every element, and its gradient."""
    if predictions.shape != targets.shape:
        raise InputError(f"MSE needs predictions and targets of one shape. Received: "
                         f"predictions={predictions.shape}, targets={targets.shape}")
    diff = predictions - targets.astype(predictions.dtype, copy=False)
    loss = float(np.mean(np.square(diff, dtype=np.float64)))
    return loss, (diff * (2.0 / diff.size)).astype(predictions.dtype, copy=False)


def _cross_entropy_on_labels(logits, labels, config: "TrainConfig"):
    return softmax_cross_entropy(logits, labels, config.label_smoothing)


def _mse_on_labels(outputs, labels, config: "TrainConfig"):
    onehot = np.zeros_like(outputs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return mean_squared_error(outputs, onehot)


#: loss name -> f(outputs (N, K), integer labels (N,), config) -> (loss, d loss / d outputs)
LOSSES: dict[str, Callable] = {"cross_entropy": _cross_entropy_on_labels, "mse": _mse_on_labels}


# -- optimizers -------------------------------------------------------------------------------
class Optimizer(abc.ABC):
    """Updates parameters in place from their gradients; its state saves to and loads from arrays."""

    name = ""

    def __init__(self, weight_decay: float = 0.0):
        self.weight_decay = float(weight_decay)
        self.slots: dict[str, dict[str, np.ndarray]] = {}  # slot name -> parameter name -> array
        self.steps = 0

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float):
        self.steps += 1
        lr = float(lr)
        for name, grad in grads.items():
            self.update(name, params[name], grad, lr)

    @abc.abstractmethod
    def update(self, name: str, param: np.ndarray, grad: np.ndarray, lr: float):
        """Apply one step to ``param`` in place (``self.steps`` already counts this step)."""

    def slot(self, slot: str, name: str) -> np.ndarray | None:
        return self.slots.setdefault(slot, {}).get(name)

    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"{slot}/{name}": value for slot, per in self.slots.items() for name, value in per.items()}
        arrays["steps"] = np.asarray(self.steps, np.int64)
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]):
        self.steps = int(arrays["steps"])
        self.slots = {}
        for key, value in arrays.items():
            if key == "steps":
                continue
            slot, name = key.split("/", 1)
            self.slots.setdefault(slot, {})[name] = np.array(value, dtype=np.float32)


class SGD(Optimizer):
    """Stochastic gradient descent as PyTorch defines it (dampening 0).

    ``g = grad + wd * p``; with momentum ``b = m * b + g`` (``b = g`` on the first step) and the
    step direction ``g + m * b`` (Nesterov) or ``b``; then ``p -= lr * direction``.
    """

    name = "sgd"

    def __init__(self, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(weight_decay)
        if nesterov and momentum <= 0:
            raise InputError(f"Nesterov momentum needs momentum > 0. Received: momentum={momentum}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def update(self, name, param, grad, lr):
        g = grad + self.weight_decay * param if self.weight_decay else grad
        if self.momentum:
            buf = self.slot("momentum", name)
            if buf is None:
                buf = self.slots["momentum"][name] = np.array(g, dtype=param.dtype)
            else:
                buf *= self.momentum
                buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        param -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` here is an L2 term added to the gradient.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`` (PyTorch's arrangement of eps).
    """

    name = "adam"
    decoupled = False

    def __init__(self, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(weight_decay)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)

    def update(self, name, param, grad, lr):
        if self.decoupled:
            param *= 1.0 - lr * self.weight_decay
            g = grad
        else:
            g = grad + self.weight_decay * param if self.weight_decay else grad
        m = self.slot("m", name)
        if m is None:
            m = self.slots["m"][name] = np.zeros_like(param)
            self.slots.setdefault("v", {})[name] = np.zeros_like(param)
        v = self.slots["v"][name]
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * np.square(g)
        t = self.steps
        step_size = lr / (1.0 - self.beta1 ** t)
        denom = np.sqrt(v) / math.sqrt(1.0 - self.beta2 ** t)
        denom += self.eps
        param -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * wd`` before the Adam step."""

    name = "adamw"
    decoupled = True


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}


# -- learning-rate schedules ------------------------------------------------------------------
def make_schedule(name: str, base_lr: float, total_steps: int, steps_per_epoch: int, *, warmup_steps: int = 0,
                  step_epochs: int | None = None, gamma: float = 0.1, min_lr: float = 0.0) -> Callable[[int], float]:
    """The learning rate for a 0-based global step.

    - ``constant``: ``base_lr``;
    - ``step``: ``base_lr * gamma ** (epoch // step_epochs)`` (``step_epochs`` defaults to a third
      of the run);
    - ``cosine``: from ``base_lr`` down to ``min_lr`` along half a cosine over the steps after warmup.

    With ``warmup_steps`` the rate first rises linearly, ``base_lr * (step + 1) / warmup_steps``.
    """
    if name not in SCHEDULES:
        raise InputError(f"unknown schedule; known: {', '.join(SCHEDULES)}. Received: schedule={name!r}")
    total_epochs = max(1, math.ceil(total_steps / max(1, steps_per_epoch)))
    step_epochs = step_epochs or max(1, total_epochs // 3)

    def lr(step: int) -> float:
        if step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        if name == "step":
            return base_lr * gamma ** ((step // steps_per_epoch) // step_epochs)
        if name == "cosine":
            span = max(1, total_steps - warmup_steps)
            progress = min(1.0, (step - warmup_steps) / span)
            return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
        return base_lr

    return lr


SCHEDULES = ("constant", "step", "cosine")


# -- configuration ----------------------------------------------------------------------------
@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float | None = None  # None: the optimizer's default (DEFAULT_LR)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_epochs: int | None = None
    gamma: float = 0.1
    loss: str = "cross_entropy"
    label_smoothing: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    eval_batch_size: int = 512

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer; known: {', '.join(OPTIMIZERS)}. "
                             f"Received: optimizer={self.optimizer!r}")
        if self.loss not in LOSSES:
            raise InputError(f"unknown loss; known: {', '.join(LOSSES)}. Received: loss={self.loss!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"unknown schedule; known: {', '.join(SCHEDULES)}. Received: schedule={self.schedule!r}")
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, key)) < 1:
                raise InputError(f"{key} must be a positive integer. Received: {key}={getattr(self, key)}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"the learning rate must be a positive number. Received: lr={self.lr}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]

    def make_optimizer(self) -> Optimizer:
        if self.optimizer == "sgd":
            return SGD(self.momentum, self.nesterov, self.weight_decay)
        return OPTIMIZERS[self.optimizer](weight_decay=self.weight_decay)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "TrainConfig":
        known = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in d.items() if k in known})


# -- one step ---------------------------------------------------------------------------------
def _logits_2d(outputs: np.ndarray) -> np.ndarray:
    # Classifiers that end in a 1x1 conv give (N, K, 1, 1): the loss sees (N, K) either way.
    return outputs.reshape(outputs.shape[0], -1)


def loss_and_gradients(graph: Graph, x: np.ndarray, labels: np.ndarray, config: TrainConfig, *,
                       params: dict[str, np.ndarray] | None = None, ctx: RunContext | None = None,
                       dtype=np.float32, trainable: list[str] | None = None):
    """(loss, logits, parameter gradients) for one batch in training mode.

    ``ctx.state_updates`` afterwards holds the running-statistics updates the forward asked for.
    ``trainable`` (default: :func:`trainable_parameters`) names the parameters to return gradients for.
    """
    ctx = ctx or RunContext(training=True, need_grad=True, input_grads=False)
    input_name, output_name = graph.inputs[0].name, graph.outputs[0]
    tape = numpy_backend.forward(graph, {input_name: x}, params=params, ctx=ctx, keep="tape", dtype=dtype)
    outputs = tape.values[output_name]
    logits = _logits_2d(outputs)
    loss, dlogits = LOSSES[config.loss](logits, labels, config)
    trainable = trainable_parameters(graph) if trainable is None else trainable
    grads = numpy_backend.backward(graph, tape, {output_name: dlogits.reshape(outputs.shape)}, wanted=trainable)
    return loss, logits, {k: grads[k] for k in trainable if k in grads}


def trainable_parameters(graph: Graph) -> list[str]:
    """Floating-point parameters updated by gradients (integer constants of imported models are not)."""
    return [k for k in graph.trainable_params() if np.issubdtype(graph.params[k].dtype, np.floating)]


def apply_state_updates(graph: Graph, ctx: RunContext):
    """Write the running statistics the forward pass computed (BatchNorm) into the parameters."""
    for name, value in ctx.state_updates.items():
        if name not in graph.params:
            raise AssertionError(f"state update for '{name}', which is not a parameter of the graph")
        graph.params[name][...] = value
    ctx.state_updates.clear()


def evaluate(graph: Graph, data: Dataset, index: np.ndarray, batch_size: int = 512) -> float:
    """Accuracy of the graph in inference mode on the samples at ``index``."""
    if index.size == 0:
        return float("nan")
    input_name, output_name = graph.inputs[0].name, graph.outputs[0]
    correct = 0
    for start in range(0, index.size, batch_size):
        idx = index[start:start + batch_size]
        out = numpy_backend.forward(graph, {input_name: data.batch(idx)})[output_name]
        correct += int(np.sum(_logits_2d(out).argmax(axis=1) == data.y[idx]))
    return correct / index.size


# -- progress ---------------------------------------------------------------------------------
class ProgressBar:
    """One line on stderr per epoch: redrawn in place on a terminal, printed once at the end otherwise."""

    def __init__(self, total: int, prefix: str, stream=None, enabled: bool = True):
        self.total, self.prefix = total, prefix
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.live = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.start = time.perf_counter()
        self.last_draw = 0.0

    def line(self, done: int, loss: float, acc: float) -> str:
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (self.total - done) if done else 0.0
        width = 24
        filled = int(width * done / max(1, self.total))
        bar = "#" * filled + "." * (width - filled)
        timing = f"ETA {eta:5.1f}s" if done < self.total else f"{elapsed:5.1f}s"
        return f"{self.prefix} [{bar}] {done}/{self.total} loss {loss:.4f} acc {acc:.4f} {timing}"

    def update(self, done: int, loss: float, acc: float):
        now = time.perf_counter()
        if self.live and (now - self.last_draw > 0.1 or done == self.total):
            self.stream.write("\r" + self.line(done, loss, acc))
            self.stream.flush()
            self.last_draw = now

    def finish(self, done: int, loss: float, acc: float, extra: str = ""):
        if not self.enabled:
            return
        self.stream.write(("\r" if self.live else "") + self.line(done, loss, acc) + extra + "\n")
        self.stream.flush()


# -- the loop ---------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Trainer:
    """Trains one graph on one dataset into a run directory."""

    def __init__(self, graph: Graph, dataset: Dataset, config: TrainConfig, *, dataset_spec: str | None = None,
                 model_spec: str | None = None):
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise InputError(f"training needs a model with one input and one output. Received: "
                             f"inputs={[s.name for s in graph.inputs]}, outputs={graph.outputs}")
        sample_shape = tuple(graph.inputs[0].shape[1:])
        if sample_shape != dataset.sample_shape:
            raise InputError(f"model '{graph.name}' takes samples of shape {sample_shape} but dataset "
                             f"'{dataset.name}' holds {dataset.sample_shape}")
        out_shape = graph.shapes[graph.outputs[0]]
        classes = int(np.prod([d for d in out_shape[1:]]))
        if classes < dataset.num_classes:
            raise InputError(f"model '{graph.name}' outputs {classes} classes but dataset '{dataset.name}' has "
                             f"{dataset.num_classes} ({', '.join(dataset.labels)}). Received: output shape={out_shape}")
        self.graph = graph.copy()
        for k, v in self.graph.params.items():
            if np.issubdtype(v.dtype, np.floating):
                self.graph.params[k] = np.array(v, dtype=np.float32)
        self.graph.metadata["preprocessing"] = dataset.preprocessing()
        if classes == dataset.num_classes:
            self.graph.metadata["labels"] = list(dataset.labels)
        self.data, self.config = dataset, config
        self.dataset_spec = dataset_spec or dataset.name
        self.model_spec = model_spec or graph.name
        self.trainable = trainable_parameters(self.graph)
        self.optimizer = config.make_optimizer()
        n_train = dataset.split.train.size
        self.steps_per_epoch = math.ceil(n_train / config.batch_size)
        self.lr_at = make_schedule(config.schedule, config.lr, self.steps_per_epoch * config.epochs,
                                   self.steps_per_epoch,
                                   warmup_steps=int(round(config.warmup_epochs * self.steps_per_epoch)),
                                   step_epochs=config.step_epochs, gamma=config.gamma)
        self.history: list[dict] = []
        self.epochs_done = 0
        self.elapsed = 0.0

    # -- steps ----------------------------------------------------------------------------------
    def train_step(self, idx: np.ndarray, rng: np.random.Generator, lr: float, where: str) -> tuple[float, int]:
        x, y = self.data.batch(idx), self.data.y[idx]
        ctx = RunContext(training=True, need_grad=True, input_grads=False, rng=rng)
        # Overflow on the way to a NaN loss is reported once, below, not as NumPy warnings.
        with np.errstate(over="ignore", invalid="ignore"):
            loss, logits, grads = loss_and_gradients(self.graph, x, y, self.config, ctx=ctx,
                                                     trainable=self.trainable)
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"the loss became {loss} at {where}; training stopped before applying that step. "
                f"Try a lower learning rate. Received: lr={lr:.3g}")
        apply_state_updates(self.graph, ctx)
        self.optimizer.step(self.graph.params, grads, lr)
        return loss, int(np.sum(logits.argmax(axis=1) == y))

    def run_epoch(self, epoch: int, progress: bool) -> dict:
        cfg = self.config
        train = self.data.split.train
        order = train[np.random.default_rng([cfg.seed, epoch, 1]).permutation(train.size)]
        bar = ProgressBar(self.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=progress)
        start = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        lr = self.lr_at(epoch * self.steps_per_epoch)
        # One generator per epoch (dropout masks): resuming starts at an epoch boundary, so the
        # stream is the same as in an uninterrupted run, and seeding it once per step would cost
        # more than a small model's whole step.
        rng = np.random.default_rng([cfg.seed, epoch, 2])
        for step in range(self.steps_per_epoch):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            lr = self.lr_at(epoch * self.steps_per_epoch + step)
            try:
                loss, hits = self.train_step(idx, rng, lr, f"epoch {epoch + 1}, step {step + 1}")
            except TrainingDivergedError:
                if progress:
                    sys.stderr.write("\n")
                raise
            total_loss += loss * idx.size
            correct += hits
            seen += idx.size
            bar.update(step + 1, total_loss / seen, correct / seen)
        val_acc = evaluate(self.graph, self.data, self.data.split.val, cfg.eval_batch_size)
        seconds = time.perf_counter() - start
        bar.finish(self.steps_per_epoch, total_loss / seen, correct / seen, f"  val_acc {val_acc:.4f}")
        return {"epoch": epoch + 1, "loss": total_loss / seen, "train_accuracy": correct / seen,
                "val_accuracy": val_acc, "seconds": seconds, "lr": lr}

    # -- the run --------------------------------------------------------------------------------
    def fit(self, run_dir, *, progress: bool = True) -> dict:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for epoch in range(self.epochs_done, self.config.epochs):
            try:
                record = self.run_epoch(epoch, progress)
            except TrainingDivergedError as exc:
                kept = (f"the last good checkpoint (epoch {self.epochs_done}) is kept in {run_dir / 'checkpoint'}"
                        if self.epochs_done else "no epoch completed, so there is no checkpoint")
                self.write_metrics(run_dir, stopped=str(exc))
                raise TrainingDivergedError(f"{exc}; {kept}") from None
            self.history.append(record)
            self.elapsed += record["seconds"]
            self.epochs_done = epoch + 1
            self.write_checkpoint(run_dir)
            self.write_metrics(run_dir)
        test_acc = evaluate(self.graph, self.data, self.data.split.test, self.config.eval_batch_size)
        save_model(self.graph, run_dir / "model")
        result = self.write_metrics(run_dir, test_accuracy=test_acc)
        plot_curves(self.history, run_dir / "curves.png")
        return result

    def summary(self, **extra) -> dict:
        return {"model": self.model_spec, "dataset": self.dataset_spec, "config": self.config.to_dict(),
                "train_samples": int(self.data.split.train.size), "val_samples": int(self.data.split.val.size),
                "test_samples": int(self.data.split.test.size), "preprocessing": self.data.preprocessing(),
                "epochs": self.epochs_done, "history": list(self.history), "seconds": self.elapsed,
                "peak_rss_mb": peak_rss_mb(), **extra}

    def write_metrics(self, run_dir: Path, **extra) -> dict:
        doc = self.summary(**extra)
        write_text(run_dir / "metrics.json", json.dumps(doc, indent=1))
        return doc

    # -- checkpoints ----------------------------------------------------------------------------
    def write_checkpoint(self, run_dir: Path):
        state = {"format_version": CHECKPOINT_FORMAT, "epochs_done": self.epochs_done, "elapsed": self.elapsed,
                 "history": self.history, "config": self.config.to_dict(), "dataset": self.dataset_spec,
                 "model": self.model_spec}
        with atomic_dir(run_dir / "checkpoint") as tmp:
            save_model(self.graph, tmp / "model")
            np.savez(tmp / "optimizer.npz", **self.optimizer.state_arrays())
            (tmp / "trainer.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def resume(cls, run_dir, *, epochs: int | None = None) -> "Trainer":
        """The trainer as it was after the last checkpointed epoch of ``run_dir``."""
        ckpt = Path(run_dir) / "checkpoint"
        state_file = ckpt / "trainer.json"
        if not state_file.is_file():
            raise InputError(f"'{run_dir}' has no checkpoint to resume from (expected {state_file})")
        try:
            state = json.loads(state_file.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{state_file} is not valid JSON: {exc}") from None
        if state.get("format_version") != CHECKPOINT_FORMAT:
            raise InputError(f"checkpoint format {state.get('format_version')} is not the one this edgecnn "
                             f"writes ({CHECKPOINT_FORMAT})")
        config = TrainConfig.from_dict(state["config"])
        if epochs is not None:
            config.epochs = int(epochs)
        graph = load_model(ckpt / "model")
        dataset = load_dataset(state["dataset"], seed=config.seed, sample_shape=tuple(graph.inputs[0].shape[1:]),
                               val_fraction=config.val_fraction, test_fraction=config.test_fraction)
        saved = graph.metadata.get("preprocessing")
        if saved:
            # The run keeps the normalisation it started with, even if the data files changed.
            dataset.set_preprocessing(saved["mean"], saved["std"])
        trainer = cls(graph, dataset, config, dataset_spec=state["dataset"], model_spec=state.get("model"))
        with np.load(ckpt / "optimizer.npz", allow_pickle=False) as npz:
            trainer.optimizer.load_state_arrays({k: npz[k] for k in npz.files})
        trainer.history = list(state["history"])
        trainer.epochs_done = int(state["epochs_done"])
        trainer.elapsed = float(state.get("elapsed", 0.0))
        return trainer


def plot_curves(history: list[dict], path: Path):
    """Loss and accuracies per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], marker="o", label="train")
    ax_acc.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def train(model: Graph, dataset_spec: str, config: TrainConfig, run_dir, *, progress: bool = True,
          model_spec: str | None = None) -> dict:
    """Load the dataset for ``model``, train, and return the metrics document."""
    dataset = load_dataset(dataset_spec, seed=config.seed, sample_shape=tuple(model.inputs[0].shape[1:]),
                           val_fraction=config.val_fraction, test_fraction=config.test_fraction)
    known = model.metadata.get("preprocessing")
    if known and len(known.get("mean", [])) == dataset.x.shape[1]:
        # Fine-tuning: the model already expects a normalisation; keep feeding it that one.
        dataset.set_preprocessing(known["mean"], known["std"])
    trainer = Trainer(model, dataset, config, dataset_spec=dataset_spec, model_spec=model_spec)
    return trainer.fit(run_dir, progress=progress)
