"""The CLI a newcomer meets (issue 11): one line and exit 2 for every local mistake, the `--`
hint, help without type tags, the exit table the README has, --json on failure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rexec.cli import common
from rexec.cli.main import COMMANDS
from tests.unit.cli.test_cli import closed_port, invoke

ROOT = Path(__file__).resolve().parents[3]
A = "127.0.0.1:1"  # never reached: every case below fails before connecting


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REXEC_TOKEN", "newcomer-token-0123456789")
    monkeypatch.setenv("REXEC_HOME", str(tmp_path))
    monkeypatch.delenv("REXEC_CONFIG", raising=False)


@pytest.mark.parametrize(("args", "says"), [
    (["--", ""], "rexec: COMMAND: the command is empty"),
    (["--timeout", "1e9", "--", "true"], "rexec: --timeout: the timeout must be more than 0 and"
                                         " at most 10000000 seconds"),
    (["--timeout", "inf", "--", "true"], "rexec: --timeout: the timeout must be a finite number"),
    (["--timeout", "nan", "--", "true"], "rexec: --timeout: the timeout must be a finite number"),
    (["--timeout", "-1", "--", "true"], "rexec: --timeout: the timeout must be more than 0"),
    (["--", "x" * 40_000], "rexec: COMMAND: the command is 40000 characters long, more than the"
                           " protocol's 32768: send a long script on stdin"),
    (["-e", "X=" + "x" * 70_000, "--", "true"], "rexec: COMMAND: the command and its"
                                                " environment take 70095 bytes in the run"
                                                " frame, more than the protocol's 65536: send"
                                                " long scripts and data on stdin"),
    (["--cwd", "", "--", "true"], "rexec: --cwd: the working directory is empty"),
    (["-e", "A=b\x00", "--", "true"], "rexec: --env: env value of A contains a NUL byte"),
    (["--connect-timeout", "-1", "--", "true"], "rexec: --connect-timeout: "),
    (["--connect-timeout", "1e9", "--", "true"], "rexec: --connect-timeout: "),
])
def test_a_local_mistake_is_one_line_exit_2_naming_the_option(args: list[str], says: str) -> None:
    status, stdout, stderr = invoke("run", "-n", A, *args)
    assert status == common.EXIT_USAGE
    assert stderr.startswith(says) and stderr.count("\n") == 1, stderr
    assert stdout == ""
    for word in ("Traceback", "pydantic", "validation error", "is the peer a rexec endpoint"):
        assert word not in stderr


@pytest.mark.parametrize("address", ["host:notaport", "[::1", "a:b:c", ":7878"])
def test_a_bad_address_is_one_line_exit_2(address: str) -> None:
    status, _, stderr = invoke("run", "-n", address, "--", "true")
    assert status == common.EXIT_USAGE
    assert stderr.startswith("rexec: ") and stderr.count("\n") == 1
    assert "address" in stderr or "pattern" in stderr  # "[::1" reads as an unclosed range


def test_an_unknown_config_key_suggests_the_closest(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text("[client]\nconect_timeout = 5\n")
    status, _, stderr = invoke("run", "-n", "--config", str(config), A, "--", "true")
    assert status == common.EXIT_USAGE
    assert stderr == (f"rexec: config file {config}: [client] conect_timeout: unknown setting"
                      " 'conect_timeout'; did you mean 'connect_timeout'?\n")


@pytest.mark.parametrize(("args", "suggestion"), [
    (["h", "ls", "-l", "/"], "rexec run h -- ls -l /"),
    (["--timeout", "5", "h", "ls", "-la", "/tmp"], "rexec run --timeout 5 h -- ls -la /tmp"),
    (["h", "grep", "--count", "x y", "f"], "rexec run h -- grep --count 'x y' f"),
])
def test_a_stray_option_after_the_address_says_to_put_dash_dash(args: list[str],
                                                                suggestion: str) -> None:
    status, _, stderr = invoke("run", *args)
    assert status == common.EXIT_USAGE
    assert "put -- before the command" in stderr and suggestion in stderr


def test_an_unknown_option_before_the_address_gets_no_dash_dash_hint() -> None:
    status, _, stderr = invoke("run", "--bogus", "h", "--", "true")
    assert status == common.EXIT_USAGE and "No such option: --bogus" in stderr
    assert "put --" not in stderr


# --- help ---------------------------------------------------------------------------------------


def _helps() -> list[tuple[str, ...]]:
    return [(), ("run",), ("shell",), ("put",), ("get",), ("batch",), ("deploy",), ("history",),
            ("history", "show"), ("hosts",), ("ping",), ("discover",), ("token",),
            ("token", "new"),
            ("token", "hash"), ("tls",), ("tls", "init"), ("tls", "fingerprint"),
            ("tls", "forget")]


@pytest.mark.parametrize("words", _helps())
def test_help_has_no_type_tags(words: tuple[str, ...]) -> None:
    status, stdout, _ = invoke(*words, "--help")
    assert status == 0
    assert not re.search(r"<(str|int|float|bool|path|list)", stdout), stdout
    assert "{" not in stdout.splitlines()[0]  # usage shows ADDRESS, not {address}
    assert "[client]" in stdout or words != ("run",)  # plain text: no markup eaten


def test_every_help_text_is_a_whole_sentence() -> None:
    import typer

    from rexec.cli.main import build_app
    from rexec.cli.server import app as server_app

    def commands(group: object) -> list[object]:
        found = []
        for command in getattr(group, "commands", {}).values():
            found += [command, *commands(command)]
        return found

    roots = [typer.main.get_command(build_app(["--help"])), typer.main.get_command(server_app)]
    checked = 0
    for command in [c for root in roots for c in [root, *commands(root)]]:
        for param in getattr(command, "params", []):
            text = (getattr(param, "help", None) or "").strip()
            if text:
                checked += 1
                assert text.endswith((".", ")", "]")), (command, param.name, text)
    assert checked > 30


def test_every_command_is_in_the_help_checked() -> None:
    assert {words[0] for words in _helps() if words} == set(COMMANDS)


def test_run_usage_shows_the_dash_dash() -> None:
    _, stdout, _ = invoke("run", "--help")
    assert stdout.splitlines()[0] == "Usage: rexec run [OPTIONS] TARGET -- COMMAND..."


def test_the_exit_table_in_help_is_the_readmes() -> None:
    _, stdout, _ = invoke("run", "--help")
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Exit statuses", 1)[1].split("\n\n", 2)[1]
    documented = re.findall(r"^\| ([^|]+?) \|", table, re.M)[2:]  # after the header rows
    statuses = [status for status, _ in common.EXIT_TABLE]
    assert documented == statuses
    for status in statuses:
        assert re.search(rf"^ +{re.escape(status)} +[a-z]", stdout, re.M), status


# --- --json -------------------------------------------------------------------------------------


def test_json_on_a_connection_failure_is_one_object_with_the_error() -> None:
    status, stdout, stderr = invoke("run", "-n", "--json", f"127.0.0.1:{closed_port()}", "--",
                                    "true")
    assert status == common.EXIT_FAILURE
    document = json.loads(stdout)
    assert document["exit_status"] == status
    assert document["error_type"] == "ConnectError"
    assert document["error"].startswith("cannot connect to 127.0.0.1:")
    assert document["exit_code"] is None and document["command"] == "true"
    assert stderr.startswith("rexec: cannot connect")


def test_json_on_a_usage_error_is_one_object_too() -> None:
    status, stdout, _ = invoke("run", "-n", "--json", "--timeout", "nan", A, "--", "true")
    assert status == common.EXIT_USAGE
    document = json.loads(stdout)
    assert (document["exit_status"], document["error_type"]) == (2, "InvalidRequest")
