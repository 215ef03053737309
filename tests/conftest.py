"""Shared fixtures: an isolated REXEC_HOME, token files, and real servers on ephemeral ports.

The helpers behind them live in tests/helpers.py; tests import those from there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, live_children, start_server, write_token


@pytest.fixture(autouse=True)
def isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own REXEC_HOME and no REXEC_TOKEN/REXEC_CONFIG/REXEC_HISTORY from
    outside (a batch records its run in REXEC_HOME's history, never the user's)."""
    home = tmp_path_factory.mktemp("rexec-home")
    monkeypatch.setenv("REXEC_HOME", str(home))
    monkeypatch.delenv("REXEC_TOKEN", raising=False)
    monkeypatch.delenv("REXEC_CONFIG", raising=False)
    monkeypatch.delenv("REXEC_HISTORY", raising=False)
    return home


@pytest.fixture(scope="session", autouse=True)
def no_processes_left_behind() -> Iterator[None]:
    """Fail the run if any test left a process (a server, a client) running."""
    yield
    deadline = time.monotonic() + 10
    while (left := live_children(os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server shared by a test module."""
    tmp = tmp_path_factory.mktemp("server")
    srv = start_server(tmp, env={"REXEC_HOME": str(tmp)})
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, for tests that inspect its log or its children."""
    srv = start_server(tmp_path, env={"REXEC_HOME": str(tmp_path)})
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture
def client_token_file(tmp_path: Path) -> Path:
    """A client-side token file holding the test token."""
    return write_token(tmp_path / "client-token")
