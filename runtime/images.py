"""Inputs for a bundle from files: ``.npy``, ``.npz`` (arrays named after the model inputs) or images.

Images (a file, or a directory of them, sorted by name) are converted to the model's channel
count (1: grayscale, 3: RGB), resized to its height and width, scaled to [0, 1] and normalised
as the manifest's ``preprocessing`` says: ``(pixel01 - mean) / std`` per channel. Pillow is
imported only when an image is read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .bundle import TensorInfo
from .errors import InputError, received

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _reason(exc: Exception) -> str:
    """The first line of an exception's message (its type when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _load_npy(path: Path, inputs: Sequence[TensorInfo]) -> dict:
    if len(inputs) != 1:
        raise InputError(f"a .npy file holds one array but the model has {len(inputs)} inputs "
                         f"{[i.name for i in inputs]}; give an .npz with one array per input. {received(path=str(path))}")
    try:
        return {inputs[0].name: np.load(path, allow_pickle=False)}
    except Exception as exc:  # noqa: BLE001 - a broken header is parsed as Python literals: ValueError,
        # SyntaxError, tokenize.TokenError...; broken data: OSError, EOFError
        raise InputError(f"'{path}' is not a readable .npy array without pickles: {_reason(exc)}") from None


def _load_npz(path: Path, inputs: Sequence[TensorInfo]) -> dict:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - as for .npy, plus zipfile.BadZipFile
        raise InputError(f"'{path}' is not a readable .npz archive without pickles: {_reason(exc)}") from None
    names = [i.name for i in inputs]
    if sorted(arrays) != sorted(names):
        raise InputError(f"the .npz arrays must be named after the model inputs {names}. "
                         f"{received(arrays=sorted(arrays))}")
    return arrays


def load_image(path: Path, info: TensorInfo, preprocessing: dict | None) -> np.ndarray:
    """One image as a ``(C, H, W)`` float32 array, ready for the model."""
    try:
        from PIL import Image
    except ImportError:
        raise InputError("reading images needs Pillow (pip install pillow); or give .npy/.npz inputs") from None
    if len(info.shape) != 4 or info.shape[1] not in (1, 3):
        raise InputError(f"images can feed only NCHW inputs with 1 or 3 channels; input {info.describe()} "
                         f"is neither. {received(path=str(path))}")
    channels, height, width = info.shape[1:]
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise OSError, ValueError, SyntaxError,
        # EOFError, struct.error, DecompressionBombError...: each a file that is not a readable image
        raise InputError(f"'{path}' is not a readable image: {_reason(exc)}") from None
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    if preprocessing:
        mean = np.asarray(preprocessing.get("mean", [0.0] * channels), dtype=np.float32)
        std = np.asarray(preprocessing.get("std", [1.0] * channels), dtype=np.float32)
        if mean.shape != (channels,) or std.shape != (channels,) or np.any(std == 0):
            raise InputError(f"manifest preprocessing needs one mean and one non-zero std per channel "
                             f"({channels}). {received(mean=mean.tolist(), std=std.tolist())}")
        pixels = (pixels - mean[:, None, None]) / std[:, None, None]
    return np.ascontiguousarray(pixels, dtype=np.float32)


def _load_images(paths: list[Path], inputs: Sequence[TensorInfo], preprocessing: dict | None) -> dict:
    if len(inputs) != 1:
        raise InputError(f"images can feed only single-input models; this one has {[i.name for i in inputs]}")
    return {inputs[0].name: np.stack([load_image(p, inputs[0], preprocessing) for p in paths])}


def read_inputs(path, inputs: Sequence[TensorInfo], preprocessing: dict | None = None) -> dict:
    """Feeds from a file or a directory of images.

    Arrays are float32 (other floating types are converted; integers are refused); an array
    without its batch dimension gets batch 1. Shapes are checked later, against the model.
    """
    path = Path(path)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise InputError(f"directory '{path}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        arrays = _load_images(images, inputs, preprocessing)
    elif not path.is_file():
        raise InputError(f"input file not found. {received(input=str(path))}")
    elif path.suffix.lower() == ".npy":
        arrays = _load_npy(path, inputs)
    elif path.suffix.lower() == ".npz":
        arrays = _load_npz(path, inputs)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        arrays = _load_images([path], inputs, preprocessing)
    else:
        raise InputError(f"inputs must be .npy, .npz or images ({', '.join(IMAGE_SUFFIXES)}). "
                         f"{received(input=str(path))}")
    feeds = {}
    for info in inputs:
        x = np.asarray(arrays[info.name])
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"input '{info.name}' must hold floating-point values (the model takes "
                             f"{info.dtype}). {received(dtype=str(x.dtype))}")
        if x.ndim == len(info.shape) - 1:
            x = x[None]
        feeds[info.name] = np.ascontiguousarray(x, dtype=np.float32)
    return feeds


def top_k(outputs: dict, output_names: Sequence[str], labels: Sequence[str] | None, k: int = 5):
    """Per sample the ``k`` most likely classes (softmax of logits), for a single-output classifier."""
    if not labels or len(output_names) != 1 or k < 1:
        return None
    y = np.asarray(outputs[output_names[0]], dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != len(labels):
        return None
    is_prob = np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3)
    if not is_prob:
        e = np.exp(y - y.max(axis=1, keepdims=True))
        y = e / e.sum(axis=1, keepdims=True)
    ranked = []
    for row in y:
        order = np.argsort(-row, kind="stable")[:k]
        ranked.append([{"label": str(labels[i]), "index": int(i), "probability": float(row[i])} for i in order])
    return ranked
