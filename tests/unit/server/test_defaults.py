"""Each server default is written once (rexec.server.defaults): whatever is built without
arguments has the limits and timeouts of one built from ``ServerSettings()``."""

from __future__ import annotations

from rexec.server.exec.runner import Confinement, Runner
from rexec.server.identity import Identities
from rexec.server.limits import MaxStartups, ServerLimits, StartupGate
from rexec.server.listener import Server
from rexec.server.settings import ServerSettings
from rexec.server.state import ServerState


def assert_state_matches(state: ServerState, settings: ServerSettings) -> None:
    assert state.limits == ServerLimits.from_settings(settings)
    assert (state.handshake_timeout, state.drain_grace, state.umask) == (
        settings.handshake_timeout, settings.drain_grace, settings.umask)
    assert state.runner.kill_grace == settings.kill_grace
    assert str(state.gate.max_startups) == settings.max_startups
    assert state.gate.per_source == settings.per_source_max_startups
    assert state.penalty.max_delay == settings.auth_penalty_max


def test_limits_built_without_arguments_are_the_default_settings() -> None:
    limits = ServerLimits()
    assert limits == ServerLimits.from_settings(ServerSettings())
    assert limits.idle_timeout == ServerSettings().idle_timeout > 0


def test_a_server_built_without_arguments_has_the_default_settings() -> None:
    settings = ServerSettings()
    server = Server(Identities())
    assert (server.host, server.port, server.keepalive) == (
        settings.host, settings.port, settings.keepalive)
    assert_state_matches(server.state, settings)


def test_a_state_built_without_arguments_has_the_default_settings() -> None:
    assert_state_matches(ServerState(Identities()), ServerSettings())


def test_a_runner_and_a_confinement_built_without_arguments_have_the_default_settings() -> None:
    settings = ServerSettings()
    assert Runner().kill_grace == settings.kill_grace
    assert Confinement().umask == settings.umask
    gate = StartupGate()
    assert (str(gate.max_startups), gate.per_source) == (
        settings.max_startups, settings.per_source_max_startups)


def test_every_limit_comes_from_its_setting_and_idle_timeout_is_off_as_0() -> None:
    settings = ServerSettings(max_output=1000, max_command_length=100, max_env_bytes=10,
                              max_startups=20, per_source_max_startups=5, idle_timeout=0,
                              auth_penalty_max=1.5)
    assert ServerLimits.from_settings(settings) == ServerLimits(
        max_output=1000, max_command_length=100, max_env_bytes=10,
        max_startups=MaxStartups.parse(20), per_source_max_startups=5,
        idle_timeout=0, auth_penalty_max=1.5)
