"""Reading run inputs for a bundle: .npy, .npz and images (resize + manifest normalisation)."""
import numpy as np
import pytest
from PIL import Image

from edgecnn.runtime.bundle import TensorInfo
from edgecnn.runtime.errors import InputError
from edgecnn.runtime.images import read_inputs, top_k

GRAY = [TensorInfo("input", (1, 1, 8, 8), "float32")]
RGB = [TensorInfo("image", (1, 3, 4, 6), "float32")]


def test_npy_float64_becomes_float32_and_gets_a_batch(tmp_path, rng):
    x = rng.standard_normal((1, 8, 8))
    np.save(tmp_path / "x.npy", x)
    feeds = read_inputs(tmp_path / "x.npy", GRAY)
    assert feeds["input"].dtype == np.float32 and feeds["input"].shape == (1, 1, 8, 8)
    np.testing.assert_array_equal(feeds["input"][0], x.astype(np.float32))


def test_integer_arrays_are_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.uint8))
    with pytest.raises(InputError, match="floating-point.*Received: dtype='uint8'"):
        read_inputs(tmp_path / "x.npy", GRAY)


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="without pickles"):
        read_inputs(tmp_path / "x.npy", GRAY)


def test_gray_image_resized_and_normalised(tmp_path):
    pixels = ((np.arange(16 * 16).reshape(16, 16) * 5) % 256).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    feeds = read_inputs(tmp_path / "a.png", GRAY, {"mean": [0.5], "std": [0.25]})
    resized = np.asarray(Image.fromarray(pixels).resize((8, 8), Image.Resampling.BILINEAR), np.float64)
    expected = (resized / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(feeds["input"][0, 0], expected, rtol=1e-6, atol=1e-6)


def test_rgb_directory_is_a_batch_in_name_order(tmp_path):
    colours = {"b.png": (0, 255, 0), "a.png": (255, 0, 0)}
    for name, colour in colours.items():
        Image.new("RGB", (12, 8), colour).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("ignored")
    feeds = read_inputs(tmp_path, RGB, {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]})
    x = feeds["image"]
    assert x.shape == (2, 3, 4, 6)
    np.testing.assert_allclose(x[0, :, 0, 0], [1, 0, 0])  # a.png: red, channel first
    np.testing.assert_allclose(x[1, :, 0, 0], [0, 1, 0])


def test_unreadable_image_and_unknown_suffix(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="not a readable image"):
        read_inputs(tmp_path / "bad.png", GRAY)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(InputError, match="inputs must be .npy, .npz or images"):
        read_inputs(tmp_path / "x.csv", GRAY)


def test_top_k_is_softmax_order():
    logits = np.array([[0.0, 2.0, 1.0]], np.float32)
    ranked = top_k({"y": logits}, ["y"], ["a", "b", "c"], k=2)
    e = np.exp([0.0, 2.0, 1.0])
    assert [c["label"] for c in ranked[0]] == ["b", "c"]
    assert ranked[0][0]["probability"] == pytest.approx(e[1] / e.sum())
