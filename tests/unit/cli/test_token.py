"""``rexec token new|hash``: stdout, missing directories, standard input."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from rexec.cli import common
from rexec.cli.main import build_app
from rexec.wire.auth import TokenVerifier
from tests.unit.cli.test_cli import invoke


def test_token_new_dash_prints_the_token_alone_on_stdout_and_its_hash_on_stderr() -> None:
    status, stdout, stderr = invoke("token", "new", "-")
    assert status == 0
    token = stdout.rstrip("\n")
    assert stdout == token + "\n" and len(token) >= 32
    line = stderr.strip()
    assert line.startswith('token_hash = "') and token not in stderr
    stored = TokenVerifier.parse(line.split('"')[1])  # the hash of this very token
    assert stored == TokenVerifier.from_token(token, stored.salt)


def test_token_new_into_a_missing_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "no" / "such"
    status, stdout, stderr = invoke("token", "new", str(folder / "deploy.token"))
    assert (status, stdout) == (common.EXIT_USAGE, "")
    assert f"{folder} does not exist" in stderr and "mkdir" in stderr
    assert not (tmp_path / "no").exists()  # nothing created on the way


def test_token_new_under_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    status, _, stderr = invoke("token", "new", str(tmp_path / "file" / "t"))
    assert status == common.EXIT_USAGE
    assert f"{tmp_path / 'file'} is not a directory" in stderr


def test_token_hash_reads_stdin_when_it_is_not_a_terminal() -> None:
    args = ["token", "hash"]
    result = CliRunner().invoke(build_app(args), args, input="some-token-0123456789abcdef\n")
    assert result.exit_code == 0
    stored = TokenVerifier.parse(result.stdout.strip().split('"')[1])
    assert stored == TokenVerifier.from_token("some-token-0123456789abcdef", stored.salt)
