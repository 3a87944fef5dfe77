"""Facts about this machine and this install that every part of edgecnn asks for.

They live in the runtime, the lowest layer (the compiler and the targets may import it, it
imports neither), so each fact has one definition instead of a copy per package.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

# platform.machine() spells one architecture differently per OS; bundles, presets and the
# toolchain triples use the Linux names.
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def host_arch() -> str:
    """This CPU's architecture as bundles and presets name it: ``x86_64``, ``aarch64``, ..."""
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/edgecnn``, or ``~/.cache/edgecnn`` when the variable is unset or empty.

    Everything edgecnn caches lives below it, one folder per kind (``bundles``, ``tuning``,
    ``aarch64-runner``, the MNIST download), so one ``rm -r`` resets them all.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecnn"


def edgecnn_version() -> str:
    """The installed edgecnn's version, ``"unknown"`` in a source tree that was never installed."""
    try:
        from importlib.metadata import version

        return version("edgecnn")
    except Exception:  # noqa: BLE001 - PackageNotFoundError, or a broken metadata directory
        return "unknown"
