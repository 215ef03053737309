"""What a reload changes, what it keeps for a restart, and how the shared state takes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from rexec.server.identity import Identities
from rexec.server.limits import MaxStartups, ServerLimits
from rexec.server.reload import Configuration, changes, needs_restart, serves_tls
from rexec.server.settings import ServerSettings
from rexec.server.state import ServerState
from rexec.wire.auth import TokenVerifier

HASH = TokenVerifier.from_token("t" * 32).format()


def _settings(**fields: object) -> ServerSettings:
    return ServerSettings.model_validate(fields)


def test_only_listening_settings_the_kill_grace_and_tls_on_or_off_need_a_restart() -> None:
    running = _settings()
    assert needs_restart(running, _settings(idle_timeout=5, max_output=10, umask="077")) == []
    assert needs_restart(running, _settings(host="::1", port=1, kill_grace=1)) == [
        "host", "port", "kill_grace"]
    assert needs_restart(running, _settings(tls_cert="c", tls_key="k")) == [
        "tls_cert", "tls_key"]
    tls = _settings(tls_cert="c", tls_key="k")
    assert needs_restart(tls, _settings(tls_cert="c2", tls_key="k2", tls_client_ca="ca")) == []
    assert needs_restart(tls, running) == ["tls_cert", "tls_key"]


def test_a_bracketed_ipv6_host_is_the_bare_address() -> None:
    assert _settings(host="[::1]").host == "::1"
    assert needs_restart(_settings(host="::1"), _settings(host="[::1]")) == []


def test_host_may_be_a_list_each_unbracketed_and_one_is_the_plain_string() -> None:
    several = _settings(host=["127.0.0.2", "[::1]", "127.0.0.3"])
    assert several.host == ("127.0.0.2", "::1", "127.0.0.3") == several.hosts
    assert _settings(host=["[::1]"]).host == "::1" and _settings(host="::1").hosts == ("::1",)
    assert needs_restart(_settings(), _settings(host=["127.0.0.1"])) == []
    assert needs_restart(several, _settings(host=["127.0.0.2", "::1", "127.0.0.3"])) == []
    assert needs_restart(several, _settings(host=["127.0.0.2", "::1"])) == ["host"]
    assert needs_restart(several, _settings(host=["127.0.0.3", "::1", "127.0.0.2"])) == []


@pytest.mark.parametrize(("hosts", "message"), [
    ([], "an empty list"), (["127.0.0.2", "127.0.0.2"], "127.0.0.2 given twice"),
])
def test_a_host_list_must_name_each_address_once(hosts: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _settings(host=hosts)


def test_changes_name_settings_identities_and_a_new_token_in_the_same_file() -> None:
    before = _settings(identities={"a": {"token_hash": HASH}, "b": {"token_hash": HASH}})
    running = Configuration.build(before, "old-token-0123456789", None)
    after = _settings(idle_timeout=1, identities={"b": {"token_hash": HASH, "shell": False},
                                                  "c": {"token_hash": HASH}})
    assert changes(running, after, "new-token-0123456789") == {
        "changed": ["idle_timeout", "token"], "identities_added": ["c"],
        "identities_removed": ["a"], "identities_changed": ["b"]}
    assert changes(running, before, "old-token-0123456789") == {}


def test_new_limits_re_limit_the_gate_and_the_penalty_keeping_their_counts() -> None:
    state = ServerState(Identities())
    assert state.gate.admit("10.0.0.1") is None
    state.penalty.failed("10.0.0.2")
    gate, penalty = state.gate, state.penalty
    state.apply_limits(ServerLimits(max_startups=MaxStartups.parse(1),
                                    per_source_max_startups=1, auth_penalty_max=0.0))
    assert (state.gate, state.penalty) == (gate, penalty)  # the same objects: counts kept
    refusal = state.gate.admit("10.0.0.3")
    assert refusal is not None and refusal.rule == "max_startups"
    state.gate.release("10.0.0.1")  # what the old limits let in is released as before
    assert state.gate.admit("10.0.0.3") is None
    assert state.penalty.delay("10.0.0.2") == 0.0  # capped at the new maximum


def test_configuration_opens_the_audit_log_it_names(tmp_path: Path) -> None:
    config = Configuration.build(_settings(audit_log=tmp_path / "a.jsonl"), "t" * 32, None)
    try:
        assert config.audit.record("reload")
        assert sorted(config.identities.by_name) == ["default"]
    finally:
        config.audit.close()


def test_tls_auto_serves_tls_and_turning_it_off_needs_a_restart() -> None:
    auto, plain = ServerSettings(tls="auto"), ServerSettings()
    assert serves_tls(auto) and not serves_tls(plain)
    assert needs_restart(auto, plain) == ["tls"]
    assert needs_restart(auto, ServerSettings(tls="auto")) == []
