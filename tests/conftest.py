"""Shared fixtures. Tests import edgecnn through its installed package only."""
import ctypes
import os
import signal
import sys
import time

import numpy as np
import pytest

# prctl(2) option: orphaned descendants are re-parented to this process instead of to init.
_PR_SET_CHILD_SUBREAPER = 36
# How long a child that is already exiting (terminated by its fixture just before) may take.
_EXIT_GRACE_S = 5.0


def _become_subreaper() -> bool:
    """Make pytest the reaper of its orphaned descendants (Linux only), so a grandchild whose
    parent died first (TVM's rpc_server killed by a signal leaves its PopenWorker so) is still
    seen as pytest's child at the end of the session instead of running on under init."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def pytest_configure(config):
    _become_subreaper()


def _children(pid: int) -> dict[int, str]:
    """pid -> state letter of ``pid``'s child processes, read from /proc."""
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]  # the command name may hold spaces
        if int(ppid) == pid:
            kids[int(entry)] = state
    return kids


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _live_children() -> dict[int, str]:
    """Reap exited children (zombies), return the live ones with their command lines."""
    live = {}
    for pid, state in _children(os.getpid()).items():
        if state == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by its owner meanwhile
                pass
        else:
            live[pid] = _command_line(pid)
    return live


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_suite():
    """Fail the session if a process started by a test or a command under test is still running
    at its end: no process may outlive a command or the test suite. Survivors are killed too."""
    yield
    if not os.path.isdir("/proc"):
        return
    deadline = time.monotonic() + _EXIT_GRACE_S
    live = _live_children()
    while live and time.monotonic() < deadline:
        time.sleep(0.1)
        live = _live_children()
    for pid in live:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if live:
        pytest.fail("processes started during the tests outlived them (killed now):\n"
                    + "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in sorted(live.items())),
                    pytrace=False)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


POOL_KEY = "loopback"


@pytest.fixture(scope="session")
def device_pool(tmp_path_factory):
    """A real TVM RPC tracker and three RPC servers under one key, all on 127.0.0.1, shared by
    the tests that only use the pool; tests that kill a device start their own (``fresh_pool``)."""
    from edgecnn.runtime.fleet import LocalPool

    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (the test extra installs it)")
    with LocalPool(3, key=POOL_KEY, log_dir=tmp_path_factory.mktemp("pool-logs")) as pool:
        yield pool


@pytest.fixture
def fresh_pool(tmp_path):
    """A pool of one-thread devices (three servers sharing this machine's cores), for tests that
    kill one."""
    from edgecnn.runtime.fleet import LocalPool

    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (the test extra installs it)")
    with LocalPool(3, key=POOL_KEY, log_dir=tmp_path / "pool-logs", threads=1) as pool:
        yield pool
