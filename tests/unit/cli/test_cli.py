"""The ``rexec`` command line in process: parsing, exit statuses, the lazy command registry."""

from __future__ import annotations

import gc
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rexec.cli import common
from rexec.cli.main import COMMANDS, build_app, wanted
from tests.unit.test_imports import modules_after

gc.enable()  # importing rexec.cli.main turned the collector off, as the CLI's start-up wants

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    """Run ``rexec ARGS...`` in process; its exit status, stdout and stderr."""
    result = runner.invoke(build_app(args), list(args), prog_name="rexec")
    return result.exit_code, result.stdout, result.stderr


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_version() -> None:
    assert invoke("--version") == (0, "rexec 0.1.0\n", "")


def test_no_arguments_shows_the_help_with_every_command() -> None:
    status, stdout, stderr = invoke()
    assert status == 2
    assert "run" in stdout + stderr and "token" in stdout + stderr


@pytest.mark.parametrize(("args", "message"), [
    (["run"], "Missing argument"),
    (["run", "h:1"], "Missing argument"),
    (["run", "--env", "NOVALUE", "h:1", "--", "true"], "expected KEY=VALUE"),
    (["run", "--timeout", "0", "h:1", "--", "true"], "--timeout: the timeout must be more than 0"),
    (["run", "--connect-timeout", "soon", "h:1", "--", "true"], "Invalid value"),
    (["nosuchcommand"], "No such command"),
])
def test_usage_errors_exit_2_with_their_message(args: list[str], message: str) -> None:
    status, _, stderr = invoke(*args)
    assert status == common.EXIT_USAGE
    assert message in stderr


def test_no_token_anywhere_exits_2_and_says_where_to_put_one() -> None:
    status, _, stderr = invoke("run", "-n", "127.0.0.1:1", "--", "true")
    assert status == common.EXIT_USAGE
    assert stderr.startswith("rexec: no token: set REXEC_TOKEN")


def test_a_bad_address_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REXEC_TOKEN", "t")
    status, _, stderr = invoke("run", "-n", "host:notaport", "--", "true")
    assert status == common.EXIT_USAGE
    assert "port" in stderr


def test_a_refused_connection_exits_255(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REXEC_TOKEN", "t")
    status, _, stderr = invoke("run", "-n", f"127.0.0.1:{closed_port()}", "--", "true")
    assert status == common.EXIT_FAILURE
    assert stderr.startswith("rexec: cannot connect to 127.0.0.1:")


def test_token_new_refuses_to_overwrite_and_hash_refuses_a_bad_token(tmp_path: Path) -> None:
    existing = tmp_path / "token"
    existing.write_text("x")
    assert invoke("token", "new", str(existing)) == (
        common.EXIT_USAGE, "", f"rexec: {existing} exists; not overwriting a token\n")
    status, _, stderr = invoke("token", "hash", "--token-file", str(tmp_path / "missing"))
    assert status == common.EXIT_USAGE
    assert stderr.startswith("rexec: ")


def test_token_new_then_hash(tmp_path: Path) -> None:
    status, printed, _ = invoke("token", "new", str(tmp_path / "t"))
    assert status == 0 and printed.startswith('token_hash = "')
    rehashed = invoke("token", "hash", "--token-file", str(tmp_path / "t"))
    assert rehashed[0] == 0 and rehashed[1].startswith('token_hash = "rexec-sha256$')


# --- the lazy registry --------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "h:1", "--", "true"], ["run"]),
    (["--version", "run"], ["run"]),
    (["token", "new", "f"], ["token"]),
    (["run", "--help"], ["run"]),
    ([], list(COMMANDS)),
    (["--help"], list(COMMANDS)),
    (["--show-completion", "bash"], list(COMMANDS)),
    (["nosuchcommand"], list(COMMANDS)),
])
def test_only_the_command_argv_names_is_registered(argv: list[str], expected: list[str]) -> None:
    assert wanted(argv) == expected


def test_completion_registers_every_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_REXEC_COMPLETE", "complete_bash")
    assert wanted(["run"]) == list(COMMANDS)


def test_rexec_run_imports_no_other_command_module() -> None:
    loaded = modules_after("import sys\nfrom rexec.cli.main import build_app\n"
                           "build_app(['run', 'h:1', '--', 'true'])")
    assert "rexec.cli.run" in loaded
    assert "rexec.cli.token" not in loaded


def test_show_completion_prints_a_bash_script(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")  # SHELL, not guessed
    status, stdout, _ = invoke("--show-completion", "bash")
    assert status == 0
    assert "complete" in stdout and "_COMPLETE" in stdout
