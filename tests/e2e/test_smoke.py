from tests.helpers import run_cli


def test_echo(server, client_token_file):
    r = run_cli("run", server.address, "--", "echo", "hello", token_file=client_token_file)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello\n"
