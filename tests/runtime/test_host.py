"""runtime/host.py and runtime/jsonable.py: the one copy of each small shared fact."""
import json
from pathlib import Path

import numpy as np
import pytest

from edgecnn.runtime import host
from edgecnn.runtime.jsonable import jsonable


def test_cache_root_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert host.cache_root() == tmp_path / "edgecnn"


@pytest.mark.parametrize("value", [None, ""])
def test_cache_root_falls_back_to_dot_cache_when_xdg_is_unset_or_empty(monkeypatch, tmp_path, value):
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", value)
    assert host.cache_root() == tmp_path / ".cache" / "edgecnn"


@pytest.mark.parametrize("machine, arch", [("AMD64", "x86_64"), ("x86_64", "x86_64"), ("arm64", "aarch64"),
                                           ("aarch64", "aarch64"), ("riscv64", "riscv64")])
def test_host_arch_uses_the_linux_names(monkeypatch, machine, arch):
    monkeypatch.setattr(host.platform, "machine", lambda: machine)
    assert host.host_arch() == arch


def test_every_package_asks_the_same_host_arch():
    from edgecnn.runtime import bundle
    from edgecnn.targets import machine_arch

    assert bundle.host_arch is host.host_arch and machine_arch is host.host_arch


def test_version_is_a_string_even_without_metadata(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert host.edgecnn_version() == "unknown"


def test_jsonable_turns_numpy_into_plain_python_recursively():
    value = {"a": np.float32(0.5), 3: (np.int64(2), [np.arange(3).reshape(1, 3)]), "b": np.bool_(True),
             "s": "text", "n": None}
    out = jsonable(value)
    assert out == {"a": 0.5, "3": [2, [[[0, 1, 2]]]], "b": True, "s": "text", "n": None}
    assert type(out["a"]) is float and type(out["3"][0]) is int and type(out["b"]) is bool
    json.dumps(out)


def test_jsonable_hands_unknown_values_to_default_or_leaves_them():
    odd = Path("/x")
    assert jsonable({"p": odd})["p"] is odd
    assert jsonable({"p": odd, "raw": b"ab"}, default=str) == {"p": "/x", "raw": "b'ab'"}
