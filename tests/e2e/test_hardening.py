"""Issue 9's findings against real servers: each test replays an attack and shows it fail.

Findings 1 (the token in every child's environment), 2 (the env of a run under no policy),
6 (a cwd symlink flipped between check and start), 8 (unaudited decisions and endings),
9 (a cwd whose resolution raised), 10 (a world-readable audit log), 13 (raw line separators in
the audit log) and 15 (vague spawn errors, run_as children with the server's umask, full
capability bounding set and no limits).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import rexec
from rexec import CommandNotStarted
from rexec.client.core import Authenticated, ClientCore
from rexec.server.exec.env import DEFAULT_PATH
from rexec.wire.auth import TokenVerifier
from rexec.wire.codec import encode
from rexec.wire.frames import Hello
from tests.helpers import live_processes, run_cli, start_server, wait_until

SERVER_TOKEN = "GREPME-server-token-7f3a9c1e5b2d4f6a8c0e"  # recognisable anywhere it leaks
GUEST_TOKEN = "guest-token-with-enough-entropy-0123456789"
ROOT_USER = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT_USER, reason="switching users needs root")


def _toml(values: object) -> str:
    return json.dumps(values)


@pytest.fixture(scope="module")
def hard_server(tmp_path_factory):
    """A server whose shared token comes from REXEC_TOKEN, with restricted identities."""
    tmp = tmp_path_factory.mktemp("hardening")
    work = tmp / "work"
    (work / "inside").mkdir(parents=True)
    (work / "link").symlink_to(work / "inside")
    nobody = "nobody" if ROOT_USER else pwd.getpwuid(os.geteuid()).pw_name
    config = tmp / "server.toml"
    config.write_text(f"""
[server]
audit_log = "audit.jsonl"
env = {{ TIER = "prod", SHARED = "from-server" }}
inherit_env = ["LANG", "KEEP_*"]

[server.identities.guest]
token_hash = "{TokenVerifier.from_token(GUEST_TOKEN).format()}"
run_as = "{nobody}"
allow = {_toml(["printenv REXEC_TOKEN", "cat /proc/self/environ", "printenv", "env",
                "printenv [A-Z_]+", "cat /proc/self/status", "umask", "id -G", "ulimit -n",
                "pwd -P", "touch [a-z/._-]+", "bash -c true", "sleep [0-9.]+"])}
cwd = ["{work}"]
accept_env = ["APP_*", "LD_*", "BASH_*", "SHARED", "PATH", "GIT_*", "PYTHON*", "PERL5*",
              "SHELLOPTS", "PS4", "BROWSER", "ENV", "IFS", "REXEC_*"]
env = {{ SHARED = "from-identity" }}
umask = "027"
rlimits = {{ nofile = 64 }}
""")
    srv = start_server(tmp, "--config", str(config), token=SERVER_TOKEN, token_in_env=True,
                       env={"LANG": "C.UTF-8", "KEEP_ME": "kept", "SERVER_SECRET": "leak",
                            "REXEC_HOME": str(tmp)})
    srv.work = work  # type: ignore[attr-defined]
    srv.audit = tmp / "audit.jsonl"  # type: ignore[attr-defined]
    srv.nobody = nobody  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0, srv.log()


def guest(srv, command: str, **kwargs) -> rexec.Result:
    return rexec.run(srv.address, command, token=GUEST_TOKEN, identity="guest", **kwargs)


def audit_records(srv) -> list[dict]:
    return [json.loads(line) for line in srv.audit.read_text().splitlines()]


def environ_of(text: bytes) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in text.decode().split("\0") if "=" in entry)


# --- finding 1: the token in every child's environment ----------------------------------


def test_a_restricted_identity_cannot_read_the_servers_token(hard_server):
    r = guest(hard_server, "printenv REXEC_TOKEN")
    assert (r.exit_code, r.stdout) == (1, b"")
    environ = environ_of(guest(hard_server, "cat /proc/self/environ").stdout)
    assert SERVER_TOKEN not in json.dumps(environ)
    assert not any(name == "REXEC_TOKEN" for name in environ)
    # and the token would have worked: the attack's second step is real
    assert rexec.run(hard_server.address, "id -u", token=SERVER_TOKEN).ok


def test_commands_get_the_documented_environment_and_nothing_of_the_servers(hard_server):
    env = environ_of(rexec.run(hard_server.address, "cat /proc/self/environ",
                               token=SERVER_TOKEN, env={"SHARED": "from-client"}).stdout)
    me = pwd.getpwuid(os.geteuid())
    assert env["PATH"] == DEFAULT_PATH
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (me.pw_dir, me.pw_name, me.pw_name)
    assert env["SHELL"] == (me.pw_shell or "/bin/sh")
    assert env["REXEC_IDENTITY"] == "default"
    client_ip, client_port, server_port = env["REXEC_CLIENT"].split()
    assert (client_ip, server_port) == ("127.0.0.1", str(hard_server.port))
    assert 0 < int(client_port) < 65536
    assert env["TIER"] == "prod"
    assert env["SHARED"] == "from-server"  # configured env wins over the client's, as SetEnv
    assert env["LANG"] == "C.UTF-8"
    assert env["KEEP_ME"] == "kept"  # inherit_env
    assert "SERVER_SECRET" not in env
    assert "REXEC_HOME" not in env  # never a REXEC_* variable of the server's
    assert "PWD" in env
    assert set(env) <= {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "REXEC_IDENTITY",
                        "REXEC_CLIENT", "TIER", "SHARED", "LANG", "KEEP_ME", "PWD"}


@needs_root
def test_a_run_as_child_gets_its_users_account_and_the_identitys_env(hard_server):
    env = environ_of(guest(hard_server, "cat /proc/self/environ",
                           env={"APP_MODE": "blue"}).stdout)
    entry = pwd.getpwnam(hard_server.nobody)
    assert (env["USER"], env["HOME"]) == (entry.pw_name, entry.pw_dir)
    assert env["APP_MODE"] == "blue"
    assert env["SHARED"] == "from-identity"
    assert env["REXEC_IDENTITY"] == "guest"


def _descendants(root: int) -> list[int]:
    parents = {pid: int(fields[1]) for pid, fields in live_processes()}
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent:
                found.append(pid)
                frontier.append(pid)
    return found


def test_the_token_is_nowhere_a_child_or_a_log_can_see_it(hard_server, tmp_path):
    """The token grep: children's and the guardian's environments, logs, client output."""
    needle = SERVER_TOKEN.encode()
    holder = threading.Thread(target=guest, args=(hard_server, "sleep 3"))
    holder.start()
    try:
        cli = run_cli("run", "-i", "guest", hard_server.address, "--", "printenv",
                      env={"REXEC_TOKEN": GUEST_TOKEN})
        assert cli.returncode == 0
        bad = run_cli("run", hard_server.address, "--", "true", env={"REXEC_TOKEN": "wrong"})
        assert bad.returncode == 255
        assert wait_until(lambda: len(_descendants(hard_server.proc.pid)) >= 2)
        children = _descendants(hard_server.proc.pid)
        names = []
        for pid in children:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                names.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                continue
            assert needle not in environ, names[-1]
        # the guardian was searched
        assert any(b"rexec.server.exec.guardian" in name for name in names)
        assert any(name.startswith(b"sleep") for name in names)  # and a running command
        for blob in (cli.stdout, cli.stderr, bad.stdout, bad.stderr,
                     hard_server.log_path.read_bytes(), hard_server.audit.read_bytes()):
            assert needle not in blob
        # the server's own start-up environment block is wiped too
        assert needle not in Path(f"/proc/{hard_server.proc.pid}/environ").read_bytes()
    finally:
        holder.join(30)


# --- finding 2: the env of a run request under no policy ---------------------------------


@pytest.mark.parametrize("name", [
    "BASH_ENV", "BASH_FUNC_x%%", "SHELLOPTS", "PS4", "PYTHONWARNINGS", "BROWSER",
    "GIT_CONFIG_COUNT", "PERL5OPT", "PERL5DB", "PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "ENV",
    "IFS", "REXEC_IDENTITY",
])
def test_a_restricted_identity_cannot_set_variables_that_run_code(hard_server, name):
    marker = hard_server.work / "inside" / f"ran-{abs(hash(name))}"
    script = hard_server.work / "inside" / "evil.sh"
    script.write_text(f"touch {marker}\n")
    with pytest.raises(CommandNotStarted, match=name.replace("%", ".")) as info:
        guest(hard_server, "bash -c true", env={name: str(script)})
    assert info.value.code == "refused"
    assert "restricted identity" in str(info.value)
    assert not marker.exists()


def test_the_bash_env_attack_itself_is_real_for_the_unrestricted_identity(hard_server):
    """The control for the test above: the same variable does run code when allowed."""
    marker = hard_server.work / "inside" / "ran-default"
    script = hard_server.work / "inside" / "evil-default.sh"
    script.write_text(f"touch {marker}\n")
    assert rexec.run(hard_server.address, "bash -c true", token=SERVER_TOKEN,
                     env={"BASH_ENV": str(script)}).ok
    assert marker.exists()


def test_accept_env_admits_only_its_patterns(hard_server):
    with pytest.raises(CommandNotStarted, match="FOO is not accepted") as info:
        guest(hard_server, "printenv FOO", env={"FOO": "1"})
    assert info.value.code == "refused"
    assert guest(hard_server, "printenv APP_COLOUR", env={"APP_COLOUR": "red"}).stdout \
        == b"red\n"
    refused = [r for r in audit_records(hard_server) if r.get("rule") == "accept_env"]
    assert any(r.get("env") == {"FOO": "1"} for r in refused)  # the env sent is audited


def test_a_named_identity_accepts_no_variables_unless_configured(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text(f"""[server.identities.plain]
token_hash = "{TokenVerifier.from_token(GUEST_TOKEN).format()}"
""")
    srv = start_server(tmp_path, "--config", str(config))
    try:
        with pytest.raises(CommandNotStarted, match="LANG is not accepted"):
            rexec.run(srv.address, "true", token=GUEST_TOKEN, identity="plain",
                      env={"LANG": "C"})
        # an identity without a command policy may set even PATH, once accepted
        assert rexec.run(srv.address, "true", token=GUEST_TOKEN, identity="plain").ok
    finally:
        assert srv.stop() == 0


def test_bad_environment_settings_name_the_field(tmp_path):
    for table, expected in (
        ('[server]\numask = "9"\n', b"umask"),
        (f'[server.identities.x]\ntoken_hash = "{TokenVerifier.from_token(GUEST_TOKEN).format()}"'
         '\nrlimits = { files = 3 }\n', b"unknown resource limit 'files'"),
        ('[server]\nenv = { "A=B" = "1" }\n', b"env"),
    ):
        config = tmp_path / "server.toml"
        config.write_text(table)
        r = subprocess.run([os.sys.executable, "server.py", "--port", "0", "--config",
                            str(config)], capture_output=True, timeout=30,
                           cwd=Path(__file__).resolve().parents[2],
                           env={**os.environ, "REXEC_TOKEN": GUEST_TOKEN})
        assert r.returncode == 2, r.stderr
        assert expected in r.stderr


# --- finding 6 and 9: the working directory ---------------------------------------------


def test_a_flipping_symlink_never_lands_a_command_outside_the_roots(hard_server, tmp_path):
    """The old code checked the resolved path, then started the child in the unresolved one:
    6 runs of 60 landed outside. Each run here either is refused or runs inside."""
    work = hard_server.work
    outside = tmp_path / "outside"
    outside.mkdir()
    flip = work / "flip"
    stop = threading.Event()

    def flipper() -> None:
        deadline = time.monotonic() + 120  # bounded, and by time: a count ran out under load
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            n += 1
            tmp = work / f".flip-{n % 2}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(work / "inside" if n % 2 else outside)
            os.replace(tmp, flip)

    thread = threading.Thread(target=flipper)
    thread.start()
    landed, refused = [], 0
    try:
        with rexec.BlockingClient(hard_server.address, token=GUEST_TOKEN,
                                  identity="guest") as client:
            for _ in range(60):
                try:
                    landed.append(client.run("pwd -P", cwd=str(flip)).stdout.strip())
                except CommandNotStarted:
                    refused += 1
    finally:
        stop.set()
        thread.join(30)
    assert landed and refused  # both sides of the race were hit
    assert all(path == str(work / "inside").encode() for path in landed), landed


@pytest.mark.parametrize("cwd", ["/proc/1/cwd", "{work}/loop", "{work}/" + "n" * 300,
                                 "{work}/missing"])
def test_a_cwd_that_cannot_be_resolved_is_refused_cleanly(hard_server, cwd):
    work = hard_server.work
    if not (work / "loop").is_symlink():
        (work / "loop").symlink_to(work / "loop")
    path = cwd.format(work=work)
    for kwargs in ({"token": SERVER_TOKEN}, {"token": GUEST_TOKEN, "identity": "guest"}):
        with rexec.BlockingClient(hard_server.address, **kwargs) as client:
            with pytest.raises(CommandNotStarted, match="working directory") as info:
                client.run("pwd -P", cwd=path)
            assert info.value.code in ("spawn_failed", "refused")
            assert client.run("printenv TIER").stdout == b"prod\n"  # the session goes on
    assert "Traceback" not in hard_server.log()
    assert any(r.get("cwd_requested") == path and r.get("decision") in ("not_started",
                                                                         "refused")
               for r in audit_records(hard_server))


def test_the_audit_records_the_resolved_cwd_and_the_request(hard_server):
    link = hard_server.work / "link"
    assert guest(hard_server, "pwd -P", cwd=str(link)).stdout.strip() \
        == str(hard_server.work / "inside").encode()
    started = [r for r in audit_records(hard_server)
               if r.get("decision") == "started" and r.get("cwd_requested") == str(link)]
    assert started[-1]["cwd"] == str(hard_server.work / "inside")


# --- finding 15: run_as children held in --------------------------------------------------


@needs_root
def test_run_as_children_are_confined(hard_server):
    status = guest(hard_server, "cat /proc/self/status").stdout.decode()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["NoNewPrivs"].strip() == "1"
    assert int(fields["CapBnd"].strip(), 16) == 0
    assert int(fields["CapEff"].strip(), 16) == 0
    entry = pwd.getpwnam(hard_server.nobody)
    assert fields["Uid"].split() == [str(entry.pw_uid)] * 4
    assert sorted(fields["Groups"].split()) == sorted(
        str(g) for g in os.getgrouplist(entry.pw_name, entry.pw_gid))
    assert guest(hard_server, "umask").stdout.strip() == b"0027"
    assert guest(hard_server, "ulimit -n").stdout.strip() == b"64"


def test_every_child_gets_the_configured_umask_not_the_servers(tmp_path):
    old = os.umask(0o077)  # the server inherits this umask; its commands must not
    try:
        srv = start_server(tmp_path, env={"REXEC_HOME": str(tmp_path)})
    finally:
        os.umask(old)
    try:
        assert rexec.run(srv.address, "umask", token=srv.token).stdout.strip() == b"0022"
    finally:
        assert srv.stop() == 0


def test_spawn_failed_names_the_real_cause(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text(f"""[server.identities.argv]
token_hash = "{TokenVerifier.from_token(GUEST_TOKEN).format()}"
shell = false
""")
    srv = start_server(tmp_path, "--config", str(config))
    try:
        with pytest.raises(CommandNotStarted, match="program 'no-such-program'"):
            rexec.run(srv.address, "no-such-program --flag", token=GUEST_TOKEN, identity="argv")
        with pytest.raises(CommandNotStarted, match=r"working directory '/nonexistent/x'"):
            rexec.run(srv.address, "true", token=srv.token, cwd="/nonexistent/x")
    finally:
        assert srv.stop() == 0


# --- findings 8, 10, 13: the audit log ----------------------------------------------------


def test_the_audit_log_is_private_and_ascii_and_reads_with_splitlines_and_jq(hard_server):
    assert (hard_server.audit.stat().st_mode & 0o777) == 0o600
    tricky = "echo a\u2028b\u0085c\u2029d"
    assert rexec.run(hard_server.address, tricky, token=SERVER_TOKEN).ok
    raw = hard_server.audit.read_bytes()
    assert raw.isascii()
    records = [json.loads(line) for line in raw.decode().splitlines()]  # no line breaks apart
    assert any(r.get("command") == tricky for r in records)
    if shutil.which("jq"):
        out = subprocess.run(["jq", "-c", "select(.command == $c) | .decision", "--arg", "c",
                              tricky, str(hard_server.audit)], capture_output=True, check=True)
        assert out.stdout.split() == [b'"started"', b'"run"']


def test_secrets_and_long_values_in_the_env_are_not_kept_in_the_audit(hard_server):
    assert rexec.run(hard_server.address, "true", token=SERVER_TOKEN,
                     env={"DB_PASSWORD": "hunter2", "NOTE": "x" * 1000}).ok
    started = [r for r in audit_records(hard_server) if r.get("decision") == "started"][-1]
    assert started["env"]["DB_PASSWORD"] == "<hidden: 7 characters>"
    assert started["env"]["NOTE"].startswith("x" * 200 + "...<cut: 1000")
    assert "hunter2" not in hard_server.audit.read_text()


def _raw(srv, data: bytes, read: bool = True) -> None:
    with socket.create_connection((srv.host, srv.port), timeout=10) as sock:
        sock.sendall(data)
        if read:
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass


def _closed(srv, since: int) -> list[dict]:
    return [r for r in audit_records(srv)[since:] if r["event"] == "connection_closed"]


def test_every_connection_end_is_audited(hard_server):
    before = len(audit_records(hard_server))
    hello = encode(Hello(versions=[1], nonce="0" * 64))
    _raw(hard_server, b"\x00\x00\x00\x05{bad}")  # a pre-auth protocol error
    _raw(hard_server, hello + encode(Hello(versions=[1], nonce="1" * 64)))  # wrong frame
    with pytest.raises(rexec.AuthenticationError):
        rexec.run(hard_server.address, "true", token="not-the-token")
    assert rexec.run(hard_server.address, "true", token=SERVER_TOKEN).ok
    sock = socket.create_connection((hard_server.host, hard_server.port), timeout=10)
    core = ClientCore(SERVER_TOKEN)
    while not isinstance(core.next_event(), Authenticated):
        sock.sendall(core.data_to_send())
        core.receive_data(sock.recv(65536))
    with sock:
        sock.sendall(b"\x00\x00\x00\x02{}")  # a fatal error after authentication
        sock.settimeout(5)
        while sock.recv(65536):
            pass

    def ended() -> list[str]:
        return [r["code"] for r in _closed(hard_server, before)]

    # An earlier test's connection may end (and be recorded) meanwhile: wait for ours by kind.
    assert wait_until(lambda: ended().count("bad_header") >= 2 and all(
        code in ended() for code in ("unexpected_frame", "auth_failed", "disconnected")))
    records = audit_records(hard_server)[before:]
    assert any(r["event"] == "authenticated" and r["identity"] == "default" for r in records)
    assert any(r["code"] == "disconnected" and r["authenticated"] and r["identity"] == "default"
               and r["commands"] == 1 for r in _closed(hard_server, before))


def test_idle_endings_are_audited(tmp_path):
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nidle_timeout = 0.5\naudit_log = "{audit}"\n')
    srv = start_server(tmp_path, "--config", str(config))
    try:
        with rexec.BlockingClient(srv.address, token=srv.token) as client:
            assert client.run("true").ok
            time.sleep(1.5)
        assert wait_until(lambda: any(
            r.get("code") == "idle_timeout" for r in map(json.loads,
                                                         audit.read_text().splitlines())))
    finally:
        assert srv.stop() == 0


def test_a_crashed_session_is_audited_and_the_server_goes_on(tmp_path):
    """A bug in one session (here a runner that raises what no spawn raises) ends only that
    connection, with an error frame, a log line with the traceback and an audit record."""
    import asyncio

    from rexec.server.audit import AuditLog
    from rexec.server.exec.runner import Runner
    from rexec.server.identity import Identities
    from rexec.server.listener import Server

    class Broken(Runner):
        def start_shell(self, *args: object, **kwargs: object):  # type: ignore[override]
            raise RuntimeError("a bug")  # a command alone starts on the loop: start_shell

        async def spawn_shell(self, *args: object, **kwargs: object):  # type: ignore[override]
            raise RuntimeError("a bug")

    audit = tmp_path / "audit.jsonl"

    async def main() -> tuple[str, list[dict]]:
        log = AuditLog(audit)
        log.open()
        server = Server(Identities.from_token(SERVER_TOKEN), port=0, runner=Broken(),
                        audit=log)
        host, port = (await server.start())[0]
        try:
            async with rexec.Client(f"{host}:{port}", token=SERVER_TOKEN) as client:
                try:
                    await client.run("echo hi")
                except rexec.RexecError as exc:
                    message = str(exc)
            async with rexec.Client(f"{host}:{port}", token=SERVER_TOKEN) as client:
                with pytest.raises(rexec.RexecError):
                    await client.run("echo again")  # a new connection is still served
        finally:
            await server.close()
        return message, [json.loads(line) for line in audit.read_text().splitlines()]

    message, records = asyncio.run(main())
    assert "server failed" in message
    assert [r["code"] for r in records if r["event"] == "connection_closed"].count(
        "internal_error") == 2
