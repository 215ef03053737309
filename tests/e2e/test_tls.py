"""TLS and mutual TLS, with certificates made by trustme."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

import rexec
from rexec.wire.codec import encode
from rexec.wire.frames import Hello
from tests.helpers import ROOT, TOKEN, reap, run_cli, start_server, write_token


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost, a client 'alice', and strangers."""
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    files: dict[str, Path] = {name: d / name for name in (
        "ca.pem", "other-ca.pem", "server.crt", "server.key", "alice.crt", "alice.key",
        "mallory.crt", "mallory.key", "wrong-host.crt", "wrong-host.key")}
    ca.cert_pem.write_to_path(files["ca.pem"])
    other.cert_pem.write_to_path(files["other-ca.pem"])
    for name, issuer, identities, cn in (
        ("server", ca, ("127.0.0.1", "localhost"), None),
        ("alice", ca, ("alice@example.com",), "alice"),
        ("mallory", other, ("mallory@example.com",), "mallory"),
        ("wrong-host", ca, ("example.test",), None),
    ):
        cert = issuer.issue_cert(*identities, common_name=cn)
        cert.cert_chain_pems[0].write_to_path(files[f"{name}.crt"])
        cert.private_key_pem.write_to_path(files[f"{name}.key"])
        files[f"{name}.key"].chmod(0o600)  # rexec refuses private keys others can read
    return files


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki):
    tmp = tmp_path_factory.mktemp("tls-server")
    srv = start_server(tmp, "--tls-cert", str(pki["server.crt"]), "--tls-key",
                       str(pki["server.key"]))
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, pki):
    tmp = tmp_path_factory.mktemp("mtls-server")
    srv = start_server(tmp, "--tls-cert", str(pki["server.crt"]), "--tls-key",
                       str(pki["server.key"]), "--tls-client-ca", str(pki["ca.pem"]))
    yield srv
    assert srv.stop() == 0, srv.log()


def tls_run(server, token_file, *options: str, command: str = "echo secure"):
    return run_cli("run", "--token-file", str(token_file), *options, server.address, "--",
                   command)


def test_tls_cli_and_api(tls_server, pki, client_token_file):
    r = tls_run(tls_server, client_token_file, "--tls-ca", str(pki["ca.pem"]))
    assert (r.returncode, r.stdout) == (0, b"secure\n"), r.stderr
    blocking = rexec.run(tls_server.address, "head -c 3000000 /dev/zero", token=TOKEN,
                         tls_ca=pki["ca.pem"])
    assert blocking.stdout == bytes(3_000_000)

    async def main() -> rexec.Result:
        async with rexec.Client(tls_server.address, token=TOKEN, tls_ca=pki["ca.pem"]) as c:
            return await c.run("wc -c", stdin=b"x" * 3_000_000)

    assert asyncio.run(main()).stdout.strip() == b"3000000"


def test_plaintext_client_to_tls_server_is_told_tls_is_required(tls_server, client_token_file):
    started = time.monotonic()
    r = tls_run(tls_server, client_token_file)
    assert r.returncode == 255
    assert b"requires TLS" in r.stderr
    assert time.monotonic() - started < 8


def test_tls_client_to_plaintext_server_fails_fast(server, pki, client_token_file):
    started = time.monotonic()
    r = tls_run(server, client_token_file, "--tls-ca", str(pki["ca.pem"]))
    assert r.returncode == 255
    assert b"does not speak TLS" in r.stderr
    assert time.monotonic() - started < 8


def test_untrusted_server_certificate(tls_server, pki, client_token_file):
    r = tls_run(tls_server, client_token_file, "--tls-ca", str(pki["other-ca.pem"]))
    assert r.returncode == 255
    assert b"not trusted" in r.stderr
    assert r.stderr.count(b"\n") == 1


def test_host_name_is_checked(tmp_path, pki, client_token_file):
    srv = start_server(tmp_path, "--tls-cert", str(pki["wrong-host.crt"]), "--tls-key",
                       str(pki["wrong-host.key"]))
    try:
        r = tls_run(srv, client_token_file, "--tls-ca", str(pki["ca.pem"]))
        assert r.returncode == 255
        assert b"not trusted" in r.stderr
        assert b"127.0.0.1" in r.stderr
    finally:
        assert srv.stop() == 0


def test_mutual_tls_identity_is_the_certificate_subject(mtls_server, pki, client_token_file):
    r = tls_run(mtls_server, client_token_file, "--tls-ca", str(pki["ca.pem"]), "--tls-cert",
                str(pki["alice.crt"]), "--tls-key", str(pki["alice.key"]))
    assert (r.returncode, r.stdout) == (0, b"secure\n"), r.stderr
    assert "CN=alice" in mtls_server.log()


@pytest.mark.parametrize("who", [None, "mallory"])
def test_mutual_tls_refuses_missing_or_foreign_certificates(mtls_server, pki, client_token_file,
                                                            who):
    options = ["--tls-ca", str(pki["ca.pem"])]
    if who:
        options += ["--tls-cert", str(pki[f"{who}.crt"]), "--tls-key", str(pki[f"{who}.key"])]
    r = tls_run(mtls_server, client_token_file, *options, command="echo must-not-run")
    assert r.returncode == 255
    assert b"TLS handshake failed" in r.stderr
    assert b"must-not-run" not in r.stdout
    assert "must-not-run" not in mtls_server.log()


def _raw_tls(server, pki) -> tuple[socket.socket, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A TLS client over memory BIOs, so a test can tamper with the records it sends."""
    context = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    sock = socket.create_connection((server.host, server.port), timeout=10)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    sock.sendall(outgoing.read())
    return sock, tls, incoming, outgoing


def test_bit_flipped_in_a_tls_record_closes_only_that_connection(tls_server, pki):
    sock, tls, _, outgoing = _raw_tls(tls_server, pki)
    with sock:
        tls.write(encode(Hello(versions=[1], nonce="ab" * 32)))
        record = bytearray(outgoing.read())
        record[len(record) // 2] ^= 0x01  # inside the encrypted payload: the MAC must catch it
        sock.sendall(bytes(record))
        sock.settimeout(10)
        started = time.monotonic()
        while sock.recv(65536):  # session tickets, perhaps an alert; then the server closes
            pass
        assert time.monotonic() - started < 5
    assert "TLS error" in tls_server.log()
    assert rexec.run(tls_server.address, "echo ok", token=TOKEN,
                     tls_ca=pki["ca.pem"]).stdout == b"ok\n"


def test_pre_auth_deadline_covers_the_tls_handshake(tmp_path, pki):
    config = tmp_path / "server.toml"
    config.write_text("[server]\nhandshake_timeout = 1\n")
    srv = start_server(tmp_path, "--config", str(config), "--tls-cert", str(pki["server.crt"]),
                       "--tls-key", str(pki["server.key"]))
    try:
        context = ssl.create_default_context(cafile=str(pki["ca.pem"]))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        with socket.create_connection((srv.host, srv.port), timeout=10) as sock:
            sock.sendall(outgoing.read())  # a ClientHello, and then silence
            started = time.monotonic()
            while sock.recv(65536):
                pass
            assert time.monotonic() - started < 5
        assert "handshake_timeout" in srv.log()
    finally:
        assert srv.stop() == 0


def _serve_on_all_interfaces(tmp_path, *extra: str) -> subprocess.CompletedProcess[bytes] | Any:
    token = write_token(tmp_path / "tok")
    return subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--host", "0.0.0.0", "--port", "0",  # noqa: S104 - bound only; tests connect to 127.0.0.1
         "--token-file", str(token), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT,
    )


def test_refuses_plaintext_off_loopback(tmp_path):
    proc = _serve_on_all_interfaces(tmp_path)
    try:
        assert proc.wait(30) == 2
        err = proc.stderr.read()
        assert b"without TLS" in err
        assert b"--dangerously-allow-plaintext" in err
    finally:
        reap(proc)


def test_plaintext_off_loopback_only_with_the_ugly_flag_and_a_loud_warning(tmp_path):
    proc = _serve_on_all_interfaces(tmp_path, "--dangerously-allow-plaintext")
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on 0.0.0.0:")
        port = int(line.rsplit(":", 1)[1])
        r = rexec.run(f"127.0.0.1:{port}", "echo open", token=TOKEN)
        assert r.stdout == b"open\n"
        proc.terminate()
        assert proc.wait(10) == 0
        assert b"DANGER" in proc.stderr.read()
    finally:
        reap(proc)


def test_tls_off_loopback_is_fine(tmp_path, pki):
    proc = _serve_on_all_interfaces(tmp_path, "--tls-cert", str(pki["server.crt"]), "--tls-key",
                                    str(pki["server.key"]))
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on 0.0.0.0:")
        port = int(line.rsplit(":", 1)[1])
        r = rexec.run(f"127.0.0.1:{port}", "echo tls", token=TOKEN, tls_ca=pki["ca.pem"])
        assert r.stdout == b"tls\n"
    finally:
        proc.terminate()
        reap(proc)


def test_tls_settings_from_config_files(tmp_path, pki):
    server_config = tmp_path / "server.toml"
    server_config.write_text(
        f'[server]\ntls_cert = "{pki["server.crt"]}"\ntls_key = "{pki["server.key"]}"\n'
        f'tls_client_ca = "{pki["ca.pem"]}"\n')
    client_config = tmp_path / "client.toml"
    client_config.write_text(
        f'[client]\ntls_ca = "{pki["ca.pem"]}"\ntls_cert = "{pki["alice.crt"]}"\n'
        f'tls_key = "{pki["alice.key"]}"\n')
    srv = start_server(tmp_path, "--config", str(server_config))
    try:
        r = rexec.run(srv.address, "echo configured", token=TOKEN, config=client_config)
        assert r.stdout == b"configured\n"
    finally:
        assert srv.stop() == 0


def test_bad_tls_files_are_config_errors(tmp_path, pki):
    r = subprocess.run([sys.executable, str(ROOT / "server.py"), "--port", "0", "--tls-cert",
                        str(pki["server.crt"]), "--tls-key", str(tmp_path / "missing.key")],
                       capture_output=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2
    assert b"missing.key" in r.stderr or b"server.crt" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "server.py"), "--port", "0", "--tls-cert",
                        str(pki["server.crt"])], capture_output=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2
    assert b"tls_cert and tls_key" in r.stderr


def test_private_keys_others_can_read_are_refused(pki, tmp_path, mtls_server):
    """Fail closed: a server (or client) key readable by others is refused, as a token file is."""
    shared = tmp_path / "shared.key"
    shared.write_bytes(pki["server.key"].read_bytes())
    shared.chmod(0o640)
    r = subprocess.run([sys.executable, str(ROOT / "server.py"), "--port", "0", "--tls-cert",
                        str(pki["server.crt"]), "--tls-key", str(shared)],
                       capture_output=True, timeout=30, env={**os.environ, "REXEC_TOKEN": TOKEN})
    assert r.returncode == 2
    assert f"TLS key {shared} is accessible by others (mode 0640)".encode() in r.stderr
    assert b"listening" not in r.stdout
    missing = tmp_path / "missing.key"
    r = subprocess.run([sys.executable, str(ROOT / "server.py"), "--port", "0", "--tls-cert",
                        str(pki["server.crt"]), "--tls-key", str(missing)],
                       capture_output=True, timeout=30, env={**os.environ, "REXEC_TOKEN": TOKEN})
    assert r.returncode == 2
    assert f"TLS key {missing} does not exist".encode() in r.stderr
    alice_key = tmp_path / "alice.key"
    alice_key.write_bytes(pki["alice.key"].read_bytes())
    alice_key.chmod(0o644)
    cli = run_cli("run", "--tls-ca", str(pki["ca.pem"]), "--tls-cert", str(pki["alice.crt"]),
                  "--tls-key", str(alice_key), mtls_server.address, "--", "true",
                  env={"REXEC_TOKEN": TOKEN})
    assert cli.returncode in (2, 255)
    assert b"accessible by others" in cli.stderr
