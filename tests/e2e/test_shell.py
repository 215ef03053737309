"""``rexec shell`` and ``rexec run -t`` on real terminals: pexpect drives the real CLI through a
PTY against a real server, as a person at a terminal would."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

from rexec.wire.auth import TokenVerifier  # noqa: E402
from tests.helpers import ROOT, TOKEN, ServerProcess, start_server, wait_until, write_token  # noqa: E402

NOPTY_TOKEN = "nopty-token-with-enough-entropy-0123456789"
ALLOW_TOKEN = "allow-token-with-enough-entropy-0123456789"
PROMPT = "rexec-test> "


@pytest.fixture(scope="module")
def shell_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("shell")
    config = tmp / "server.toml"
    config.write_text(f"""
[server]
audit_log = "audit.jsonl"

[server.identities.nopty]
token_hash = "{TokenVerifier.from_token(NOPTY_TOKEN).format()}"
pty = false

[server.identities.held]
token_hash = "{TokenVerifier.from_token(ALLOW_TOKEN).format()}"
allow = ["echo [a-z]+"]
""")
    srv = start_server(tmp, "--config", str(config))
    srv.audit = tmp / "audit.jsonl"  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return write_token(tmp_path / "token", TOKEN)


def client_argv(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "client.py"), *args]


SPAWNED: list[pexpect.spawn] = []
REMOTE_HOME: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def remote_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The login shells' HOME: an empty folder, so that this machine's own rc files (root's
    .bashrc runs `pyenv rehash`, which waits on a lock a killed shell may leave) stay out."""
    REMOTE_HOME.append(tmp_path_factory.mktemp("remote-home"))
    yield
    REMOTE_HOME.clear()


def home_env() -> list[str]:
    return ["--env", f"HOME={REMOTE_HOME[0]}"]


@pytest.fixture(autouse=True)
def close_terminals() -> Iterator[None]:
    """Every terminal a test opened is closed after it, passed or failed."""
    yield
    while SPAWNED:
        child = SPAWNED.pop()
        if child.isalive():
            child.close(force=True)


def spawn(argv: list[str], **kwargs: object) -> pexpect.spawn:
    child = pexpect.spawn(argv[0], argv[1:], **kwargs)
    SPAWNED.append(child)
    return child


def spawn_shell(srv: ServerProcess, token_file: Path, *extra: str,
                rows: int = 30, cols: int = 100) -> pexpect.spawn:
    """``rexec shell`` on a fresh PTY of ``rows`` x ``cols``, its prompt set to PROMPT."""
    argv = client_argv("shell", "--token-file", str(token_file), *home_env(), *extra,
                       srv.address)
    child = spawn(argv, timeout=15, dimensions=(rows, cols), cwd=ROOT,
                  env={**os.environ, "TERM": "xterm", "LANG": "C.UTF-8"})
    child.sendline(f"PS1='{PROMPT}'; unset PROMPT_COMMAND; bind 'set enable-bracketed-paste off'"
                   " 2>/dev/null")
    child.expect_exact(PROMPT)
    child.expect_exact(PROMPT)  # the echo of the line above holds it once, the prompt again
    return child


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert child.signalstatus is None
    return int(child.exitstatus)


def no_process_with(*argv: str) -> bool:
    """Whether no process runs with exactly these arguments (``sleep 1001.5``)."""
    wanted = "\0".join(argv).encode() + b"\0"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes() == wanted:
                return False
        except OSError:
            continue
    return True


def test_a_shell_runs_commands_keeps_state_and_exits_with_its_status(
        shell_server: ServerProcess, token_file: Path) -> None:
    child = spawn_shell(shell_server, token_file)
    child.sendline("echo hi-$((6*7))")
    child.expect_exact("hi-42")
    child.sendline("cd /tmp; X=abc")
    child.expect_exact(PROMPT)
    child.sendline("pwd; echo $X; tty")
    child.expect(r"/tmp\r\nabc\r\n/dev/pts/\d+")
    child.sendline("echo $TERM $LANG $HOME $USER")
    child.expect(r"xterm C.UTF-8 /\S* \w+")
    child.sendline("exit 3")
    assert finish(child) == 3


def test_ctrl_c_interrupts_the_remote_program_and_the_shell_survives(
        shell_server: ServerProcess, token_file: Path) -> None:
    child = spawn_shell(shell_server, token_file)
    child.sendline("sleep 100; echo not-interrupted")
    time.sleep(0.5)
    child.sendcontrol("c")
    child.expect_exact(PROMPT)
    child.sendline("echo survived")
    child.expect_exact("survived")
    assert b"\nnot-interrupted" not in child.before  # only the echo of the typed line
    child.sendline("exit")
    assert finish(child) == 0


def test_the_window_size_follows_the_local_terminal(shell_server: ServerProcess,
                                                    token_file: Path) -> None:
    child = spawn_shell(shell_server, token_file, rows=30, cols=100)
    child.sendline("stty size")
    child.expect_exact("30 100")
    child.setwinsize(45, 132)  # the client gets SIGWINCH, the remote PTY the new size
    child.expect_exact(PROMPT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        child.sendline("stty size")
        if child.expect_exact(["45 132", "30 100"]) == 0:
            break
    else:
        pytest.fail("the remote PTY never got the new size")
    child.sendline("exit")
    assert finish(child) == 0


def test_tilde_dot_ends_a_stuck_session_and_nothing_is_left_on_the_server(
        shell_server: ServerProcess, token_file: Path) -> None:
    child = spawn_shell(shell_server, token_file)
    child.sendline("sleep 1000.25")
    assert wait_until(lambda: not no_process_with("sleep", "1000.25"), 10)  # it runs
    child.send("\r~.")
    assert finish(child) == 255
    assert b"closed (~.)" in child.before
    assert wait_until(lambda: no_process_with("sleep", "1000.25"), 10)


def test_a_sessions_background_jobs_end_with_it_as_after_a_hangup(
        shell_server: ServerProcess, token_file: Path) -> None:
    child = spawn_shell(shell_server, token_file)
    child.sendline("sleep 1000.5 &")  # a job: a process group of its own, not the shell's
    child.expect_exact(PROMPT)
    assert wait_until(lambda: not no_process_with("sleep", "1000.5"), 10)  # it runs
    child.send("\r~.")
    assert finish(child) == 255
    assert wait_until(lambda: no_process_with("sleep", "1000.5"), 10)


def test_tilde_question_lists_the_escapes_and_tilde_tilde_sends_one(
        shell_server: ServerProcess, token_file: Path) -> None:
    child = spawn_shell(shell_server, token_file)
    child.send("~?")
    child.expect_exact("Supported escape sequences")
    child.sendline("echo ~~x")
    child.expect_exact("~x")
    child.sendline("exit")
    assert finish(child) == 0


def test_escapes_can_be_turned_off_or_changed(shell_server: ServerProcess,
                                              token_file: Path) -> None:
    child = spawn_shell(shell_server, token_file, "-e", "none")
    child.sendline("echo start")
    child.expect_exact(PROMPT)
    child.send("~.\r")  # typed into the shell as it is: a command named ~.
    child.expect_exact(PROMPT)
    child.sendline("echo still-here")
    child.expect_exact("still-here")
    child.sendline("exit")
    assert finish(child) == 0
    other = spawn_shell(shell_server, token_file, "-e", "%")
    other.send("\r%.")
    assert finish(other) == 255


def test_a_megabyte_pasted_into_cat_arrives_intact(shell_server: ServerProcess,
                                                   token_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "pasted.txt"
    data = os.urandom(512 * 1024).hex().encode()
    text = b"\n".join(data[i:i + 1000] for i in range(0, len(data), 1000)) + b"\n"
    child = spawn_shell(shell_server, token_file)
    child.sendline(f"stty -echo; cat > {target}; stty echo")
    time.sleep(0.5)
    child.delaybeforesend = None  # pexpect's 50 ms before each send would take 13 s here
    for start in range(0, len(text), 4096):
        child.send(text[start:start + 4096])
    child.sendcontrol("d")
    child.expect_exact(PROMPT)
    child.sendline("exit")
    assert finish(child) == 0
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(text).hexdigest()


def test_a_full_screen_program_draws_and_quits(shell_server: ServerProcess, token_file: Path,
                                               tmp_path: Path) -> None:
    page = tmp_path / "page.txt"
    page.write_text("".join(f"line {n:03d} of the page\n" for n in range(1, 201)))
    child = spawn_shell(shell_server, token_file, rows=24, cols=80)
    child.sendline(f"less {page}")
    child.expect_exact("line 023 of the page")  # one screenful, then less waits
    assert b"line 030" not in child.before
    child.send(" ")  # the next page
    child.expect_exact("line 046 of the page")
    child.send("q")
    child.expect_exact(PROMPT)
    child.sendline("exit")
    assert finish(child) == 0


def _wrapped(srv: ServerProcess, token_file: Path, marker: str, tmp_path: Path
             ) -> pexpect.spawn:
    """bash on a PTY, which saves `stty -a`, runs rexec shell, then saves `stty -a` again."""
    before, after = tmp_path / "before", tmp_path / "after"
    child = spawn(["bash", "--norc", "--noprofile"], timeout=15, dimensions=(30, 100),
                  env={**os.environ, "PS1": "outer$ ", "TERM": "xterm"})
    child.expect_exact("outer$ ")
    argv = " ".join(client_argv("shell", "--token-file", str(token_file), *home_env(),
                                "--env", f"MARK={marker}", srv.address))
    child.sendline(f"stty -a > {before}; {argv}; echo rc=$?; stty -a > {after}")
    child.sendline("echo remote-$((40+2))")  # typed ahead: the remote shell reads it
    child.expect_exact("remote-42")
    return child


def test_a_killed_server_leaves_the_terminal_as_it_was_and_exits_255(
        token_file: Path, tmp_path: Path) -> None:
    srv = start_server(tmp_path, env={"REXEC_HOME": str(tmp_path)})
    try:
        child = _wrapped(srv, token_file, "marker-killed-server", tmp_path)
        child.sendline("sleep 60")
        time.sleep(0.5)
        srv.proc.send_signal(signal.SIGKILL)
        child.expect(r"rc=(\d+)")
        assert child.match.group(1) == b"255"
        child.expect_exact("outer$ ")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        srv.stop()
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()
    assert "-icanon" not in (tmp_path / "after").read_text()  # not left in raw mode


def test_sigterm_to_the_client_restores_the_terminal_and_exits_255(
        shell_server: ServerProcess, token_file: Path, tmp_path: Path) -> None:
    marker = "marker-sigterm-client"
    child = _wrapped(shell_server, token_file, marker, tmp_path)
    pids = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline")
            if _reads(p, marker) and "shell" in _reads(p, "")]
    clients = [pid for pid in pids if b"client.py" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(clients) == 1, pids
    os.kill(clients[0], signal.SIGTERM)
    child.expect(r"rc=(\d+)")
    assert child.match.group(1) == b"255"
    child.expect_exact("outer$ ")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()


def _reads(path: Path, marker: str) -> str:
    try:
        text = path.read_bytes().decode(errors="replace")
    except OSError:
        return ""
    return text if marker in text else ""


def test_a_script_on_stdin_runs_in_one_shell_without_a_pty(shell_server: ServerProcess,
                                                           token_file: Path) -> None:
    script = b"cd /tmp\nX=5\npwd\necho $X\ntty || true\necho oops >&2\nexit 4\n"
    done = subprocess.run(client_argv("shell", "--token-file", str(token_file),
                                      shell_server.address),
                          input=script, capture_output=True, timeout=30, cwd=ROOT, check=False)
    assert done.returncode == 4, done.stderr
    assert done.stdout == b"/tmp\n5\nnot a tty\n"
    assert done.stderr == b"oops\n"


def test_run_t_forces_a_pty_for_one_command_and_minus_t_never_does(
        shell_server: ServerProcess, token_file: Path) -> None:
    argv = client_argv("run", "-t", "--token-file", str(token_file), shell_server.address,
                       "--", "tty; stty size; exit 7")
    child = spawn(argv, timeout=15, dimensions=(33, 99), cwd=ROOT)
    child.expect(r"/dev/pts/\d+\r\n33 99")
    assert finish(child) == 7
    plain = subprocess.run(client_argv("run", "-T", "--token-file", str(token_file),
                                       shell_server.address, "--", "tty"),
                           capture_output=True, timeout=30, cwd=ROOT, check=False)
    assert (plain.returncode, plain.stdout) == (1, b"not a tty\n")


def test_an_identity_with_pty_false_is_refused_with_the_reason(
        shell_server: ServerProcess, tmp_path: Path) -> None:
    nopty = write_token(tmp_path / "nopty", NOPTY_TOKEN)
    argv = client_argv("shell", "--token-file", str(nopty), "-i", "nopty", shell_server.address)
    child = spawn(argv, timeout=15, cwd=ROOT)
    child.expect(pexpect.EOF)
    child.close()
    said = child.before.decode()
    assert child.exitstatus == 255
    assert "may not open a PTY (pty = false)" in said and "rexec run" in said, said
    # without a PTY the same identity still runs commands
    done = subprocess.run(client_argv("run", "--token-file", str(nopty), "-i", "nopty",
                                      shell_server.address, "--", "echo ok"),
                          capture_output=True, timeout=30, cwd=ROOT, check=False)
    assert (done.returncode, done.stdout) == (0, b"ok\n")


def test_an_identity_held_to_a_command_policy_gets_no_shell(
        shell_server: ServerProcess, tmp_path: Path) -> None:
    held = write_token(tmp_path / "held", ALLOW_TOKEN)
    done = subprocess.run(client_argv("shell", "--token-file", str(held), "-i", "held",
                                      shell_server.address),
                          input=b"id\n", capture_output=True, timeout=30, cwd=ROOT, check=False)
    assert done.returncode == 255
    assert b"held to a command policy" in done.stderr, done.stderr


def test_the_audit_log_records_the_session_and_its_terminal_never_its_keystrokes(
        shell_server: ServerProcess, token_file: Path) -> None:
    child = spawn_shell(shell_server, token_file)
    child.sendline("echo secret-keystrokes-9876")
    child.expect_exact(PROMPT)
    child.sendline("exit 5")
    assert finish(child) == 5
    audit = shell_server.audit.read_text()  # type: ignore[attr-defined]
    assert "secret-keystrokes-9876" not in audit
    records = [json.loads(line) for line in audit.splitlines()]
    opened = [r for r in records if r["event"] == "pty_opened"]
    ended = [r for r in records if r["event"] == "command" and r.get("session") == "shell"
             and r.get("exit_code") == 5]
    assert opened and ended
    assert opened[-1]["tty"].startswith("/dev/pts/") and ended[-1]["tty"] == opened[-1]["tty"]
    assert ended[-1]["duration"] > 0 and ended[-1]["identity"] == "default"


def test_a_pattern_of_several_hosts_is_a_usage_error(token_file: Path) -> None:
    done = subprocess.run(client_argv("shell", "--token-file", str(token_file),
                                      "127.0.0.[2-4]"),
                          capture_output=True, timeout=30, cwd=ROOT, check=False)
    assert done.returncode == 2
    assert b"matches 3 hosts" in done.stderr


def test_run_t_into_a_closed_pipe_exits_141(shell_server: ServerProcess,
                                            token_file: Path) -> None:
    proc = subprocess.Popen(client_argv("run", "-t", "--token-file", str(token_file),
                                        shell_server.address, "--", "seq 1 10000000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"1\r\n"  # a terminal's line ending
    proc.stdout.close()  # as `| head -1` does
    try:
        assert proc.wait(timeout=30) == 141
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"Traceback" not in proc.stderr.read()
    proc.stderr.close()
