"""TLS as easy as ssh host keys (issue 11), against real servers on loopback.

``rexec-server --tls auto`` makes its certificate once; clients pin its fingerprint or trust it
on first use (known_hosts); ``rexec tls init`` makes a CA and certificates for mutual TLS.
"""

from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path

import pytest

import rexec
from rexec.tls import certificate_fingerprint
from tests.helpers import TOKEN, ServerProcess, run_cli, start_server

FINGERPRINT = re.compile(r"its fingerprint is (SHA256:[A-Za-z0-9+/]{43})")
OTHER_PIN = "SHA256:LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def auto_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auto-home")


@pytest.fixture(scope="module")
def auto_server(tmp_path_factory: pytest.TempPathFactory, auto_home: Path):
    tmp = tmp_path_factory.mktemp("auto-server")
    srv = start_server(tmp, "--tls", "auto", env={"REXEC_HOME": str(auto_home)})
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def pin(auto_server: ServerProcess, auto_home: Path) -> str:
    return certificate_fingerprint(auto_home / "server.crt")


def run(server: ServerProcess, *options: str, command: str = "echo secure", **kwargs):
    return run_cli("run", "--token-file", str(server.token_file), *options, server.address,
                   "--", command, **kwargs)


# --- the server: --tls auto ------------------------------------------------------------------


def test_first_start_makes_the_certificate_and_prints_its_fingerprint(
        auto_server: ServerProcess, auto_home: Path, pin: str) -> None:
    key, cert = auto_home / "server.key", auto_home / "server.crt"
    assert (mode(key), mode(cert)) == (0o600, 0o644)
    found = FINGERPRINT.search(auto_server.log())
    assert found and found.group(1) == pin
    assert f"generated a TLS certificate {cert}" in auto_server.log()


def test_a_second_start_uses_the_same_certificate(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    first = start_server(tmp_path / "1", "--tls", "auto", env={"REXEC_HOME": str(home)})
    r = run(first, "--tls-pin", certificate_fingerprint(home / "server.crt"))
    assert r.returncode == 0, r.stderr
    assert first.stop() == 0
    made = (home / "server.crt").read_bytes(), (home / "server.key").read_bytes()
    second = start_server(tmp_path / "2", "--tls", "auto", env={"REXEC_HOME": str(home)})
    try:
        log = second.log()
        assert f"using the TLS certificate {home / 'server.crt'}" in log
        assert "generated" not in log
        found = FINGERPRINT.search(log)
        assert found and found.group(1) == certificate_fingerprint(home / "server.crt")
        assert ((home / "server.crt").read_bytes(), (home / "server.key").read_bytes()) == made
        r = run(second, "--tls-pin", found.group(1))
        assert (r.returncode, r.stdout) == (0, b"secure\n"), r.stderr
    finally:
        assert second.stop() == 0


def test_tls_auto_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('[server]\ntls = "auto"\n')
    srv = start_server(tmp_path, "--config", str(config), env={"REXEC_HOME": str(tmp_path)})
    try:
        r = run(srv, "--tls-pin", certificate_fingerprint(tmp_path / "server.crt"))
        assert r.returncode == 0, r.stderr
        r = run(srv)  # plaintext to a TLS server
        assert r.returncode == 255
    finally:
        assert srv.stop() == 0


# --- the client: --tls-pin ---------------------------------------------------------------------


def test_the_pinned_fingerprint_connects(auto_server: ServerProcess, pin: str) -> None:
    r = run(auto_server, "--tls-pin", pin)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"secure\n", b"")


def test_verbose_shows_the_tls_version_and_the_servers_fingerprint(auto_server: ServerProcess,
                                                                   pin: str) -> None:
    r = run(auto_server, "-v", "--tls-pin", pin)
    assert r.returncode == 0
    assert f"(TLS, the server certificate pinned to {pin})".encode() in r.stderr
    assert f"rexec: TLS TLSv1.3, server certificate {pin}\n".encode() in r.stderr


def test_openssl_s_hex_fingerprint_works_too(auto_server: ServerProcess, auto_home: Path,
                                              pin: str) -> None:
    import base64

    colons = ":".join(f"{byte:02X}" for byte in base64.b64decode(pin[7:] + "="))
    r = run(auto_server, "--tls-pin", f"sha256 Fingerprint={colons}")
    assert r.returncode == 0, r.stderr


def test_another_fingerprint_is_refused_before_anything_is_sent(auto_server: ServerProcess,
                                                               pin: str) -> None:
    r = run(auto_server, "--tls-pin", OTHER_PIN)
    assert r.returncode == 255
    assert f"has fingerprint {pin}, not the pinned {OTHER_PIN}".encode() in r.stderr
    assert b"secure" not in r.stdout


def test_a_bad_pin_is_a_usage_error(auto_server: ServerProcess) -> None:
    r = run(auto_server, "--tls-pin", "SHA256:nope")
    assert r.returncode == 2  # a ConfigError: local input, as every other bad option
    assert r.stderr.startswith(b"rexec: --tls-pin: 'SHA256:nope' is not a SHA-256 fingerprint")
    assert b"Traceback" not in r.stderr


def test_both_clients_pin(auto_server: ServerProcess, pin: str) -> None:
    with rexec.BlockingClient(auto_server.address, token=TOKEN, tls_pin=pin) as client:
        assert client.run("echo blocking").stdout == b"blocking\n"
    assert rexec.run(auto_server.address, "echo one", token=TOKEN, tls_pin=pin).ok

    async def main() -> bytes:
        async with rexec.Client(auto_server.address, token=TOKEN, tls_pin=pin) as client:
            return (await client.run("echo async")).stdout

    assert asyncio.run(main()) == b"async\n"
    for make in (lambda: rexec.BlockingClient(auto_server.address, token=TOKEN,
                                              tls_pin=OTHER_PIN).connect(),
                 lambda: asyncio.run(rexec.Client(auto_server.address, token=TOKEN,
                                                  tls_pin=OTHER_PIN).connect())):
        with pytest.raises(rexec.ConnectError, match="not the pinned"):
            make()


# --- the client: trust on first use ------------------------------------------------------------


def test_first_use_records_then_matches(auto_server: ServerProcess, pin: str,
                                        isolated_home: Path) -> None:
    known = isolated_home / "known_hosts"
    r = run(auto_server, "--tls-tofu")
    assert (r.returncode, r.stdout) == (0, b"secure\n"), r.stderr
    assert known.read_text() == f"{auto_server.address} {pin}\n"
    assert mode(known) == 0o600
    assert b"first connection" in r.stderr and str(known).encode() in r.stderr
    assert pin.encode() in r.stderr
    r = run(auto_server, "--tls-tofu")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"secure\n", b"")
    assert known.read_text().count("\n") == 1


def test_a_changed_certificate_is_refused_with_the_line_to_remove(
        auto_server: ServerProcess, pin: str, isolated_home: Path) -> None:
    known = isolated_home / "known_hosts"
    known.write_text(f"# mine\n{auto_server.address} {OTHER_PIN}\n")
    r = run(auto_server, "--tls-tofu")
    assert r.returncode == 255
    assert b"secure" not in r.stdout
    err = r.stderr.decode()
    assert "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!" in err
    assert pin in err
    assert f"Offending line in {known}:2:\n  {auto_server.address} {OTHER_PIN}" in err
    assert f"rexec tls forget {auto_server.address}" in err
    assert known.read_text() == f"# mine\n{auto_server.address} {OTHER_PIN}\n"  # untouched
    forgot = run_cli("tls", "forget", auto_server.address)
    assert forgot.returncode == 0, forgot.stderr
    r = run(auto_server, "--tls-tofu")
    assert r.returncode == 0 and b"first connection" in r.stderr
    assert known.read_text() == f"# mine\n{auto_server.address} {pin}\n"


def test_a_corrupt_known_hosts_is_a_clear_error(auto_server: ServerProcess,
                                                isolated_home: Path) -> None:
    known = isolated_home / "known_hosts"
    known.write_text(f"{auto_server.address} {OTHER_PIN}\nnot a line at all\n")
    r = run(auto_server, "--tls-tofu")
    assert r.returncode == 2
    assert f"rexec: known_hosts file {known}, line 2: ".encode() in r.stderr
    assert b"Traceback" not in r.stderr
    assert r.stdout == b""


def test_tofu_from_the_client_config_and_both_clients(auto_server: ServerProcess, pin: str,
                                                      tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(f'[client]\ntls = "tofu"\nknown_hosts = "hosts"\ntoken = "{TOKEN}"\n')
    with rexec.BlockingClient(auto_server.address, config=config) as client:
        assert client.run("true").ok
    assert (tmp_path / "hosts").read_text() == f"{auto_server.address} {pin}\n"
    (tmp_path / "hosts").write_text(f"{auto_server.address} {OTHER_PIN}\n")

    async def main() -> None:
        async with rexec.Client(auto_server.address, config=config):
            pass

    with pytest.raises(rexec.ConnectError, match="REMOTE HOST IDENTIFICATION HAS CHANGED"):
        asyncio.run(main())
    (tmp_path / "hosts").write_text("garbage\n")
    with pytest.raises(rexec.ConfigError, match="line 1"):
        asyncio.run(main())


# --- rexec tls init -> mutual TLS with a certificate identity ---------------------------------


def split_config(out: str) -> tuple[str, dict[str, str]]:
    """The [server] part of ``rexec tls init``'s output, and each identity's [client] part."""
    server, *clients = out.split("\n# The config of a client logging in as ")
    return server, {part.split(" ", 1)[0]: part.split("\n", 1)[1] for part in clients}


def test_tls_init_to_a_certificate_login(tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    made = run_cli("tls", "init", str(folder), "--server-name", "127.0.0.1", "--client", "ci",
                   "--client", "ops")
    assert made.returncode == 0, made.stderr
    server_part, clients = split_config(made.stdout.decode())
    (tmp_path / "server.toml").write_text(server_part)
    for name, text in clients.items():
        (tmp_path / f"{name}.toml").write_text(text)
    srv = start_server(tmp_path, "--config", str(tmp_path / "server.toml"),
                       env={"REXEC_HOME": str(tmp_path / "home")})
    try:
        r = run_cli("run", "--config", str(tmp_path / "ci.toml"), srv.address, "--", "echo ci")
        assert (r.returncode, r.stdout) == (0, b"ci\n"), r.stderr
        assert '"identity": "ci"' in srv.log() and '"subject": "CN=ci"' in srv.log()
        # ops's certificate claiming ci: the refusal says what the server saw (rexec has no -v)
        r = run_cli("run", "--config", str(tmp_path / "ops.toml"), "--identity", "ci",
                    srv.address, "--", "true")
        assert r.returncode == 255
        assert b"authentication failed" in r.stderr
        assert b"this server sees your certificate's subject as CN=ops" in r.stderr
        # the server's certificate is pinned just as well as it is verified by the CA
        pinned = run_cli("run", "--config", str(tmp_path / "ci.toml"), "--tls-pin",
                         certificate_fingerprint(folder / "server.crt"), srv.address, "--",
                         "echo pinned")
        assert (pinned.returncode, pinned.stdout) == (0, b"pinned\n"), pinned.stderr
    finally:
        assert srv.stop() == 0, srv.log()
