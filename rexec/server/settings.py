"""The ``[server]`` table and its ``[server.identities.NAME]`` tables, validated.

Merged in the one order of ``rexec.config.load_settings``; validators that need the server's own
modules (RE2 patterns, limits, identities) import them when they run.
"""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rexec.config import _Settings
from rexec.server import defaults
from rexec.sockets import KEEPALIVE
from rexec.wire.address import DEFAULT_PORT
from rexec.wire.auth import TokenVerifier
from rexec.wire.frames import MAX_COMMAND_LENGTH

if TYPE_CHECKING:
    from rexec.server.identity import Identity


RLIMIT_NAMES = {
    "as": "RLIMIT_AS", "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA",
    "fsize": "RLIMIT_FSIZE", "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK",
    "msgqueue": "RLIMIT_MSGQUEUE", "nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE",
    "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO",
    "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK",
}
"""``rlimits`` keys (as ``ulimit`` and limits.conf name them) and their ``resource`` names."""


def _umask(value: object) -> int:
    """A umask from TOML: an integer (``0o022``) or an octal string (``"022"``)."""
    if isinstance(value, str):
        if not value or any(c not in "01234567" for c in value):
            raise ValueError(f"umask {value!r} is not an octal number such as \"022\"")
        value = int(value, 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ValueError(f"umask must be an octal number from 000 to 777, not {value!r}")
    return value


Umask = Annotated[int, BeforeValidator(_umask)]


def _check_env(values: dict[str, str]) -> dict[str, str]:
    for name, value in values.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ValueError(f"environment variable name {name!r} must be non-empty, without"
                             " '=' or NUL (and its value without NUL)")
    return values


class IdentitySettings(BaseModel):
    """One ``[server.identities.NAME]`` table: how the client proves itself, and its policy."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    token_hash: str | None = Field(None, description="from `rexec token hash`; never the token")
    certificate: str | None = Field(
        None, description='TLS client subject, RFC 4514 escaping, e.g. "CN=ci,O=Example"')
    allow: list[str] = Field(default_factory=list, description="anchored RE2 regexes")
    deny: list[str] = Field(default_factory=list,
                            description="anchored RE2 regexes, checked first")
    shell: bool = Field(True, description="false: split the command line, run it without a shell")
    pty: bool = Field(True, description="false: refuse PTY sessions (rexec shell, rexec run -t)")
    cwd: list[Path] = Field(default_factory=list, description="allowed working directories")
    max_timeout: float | None = Field(None, gt=0)
    max_output: int | None = Field(None, gt=0, description="bytes of stdout+stderr per command")
    run_as: str | None = Field(None, description="user to run commands as (server runs as root)")
    max_connections: int | None = Field(None, ge=1)
    max_commands: int | None = Field(None, ge=1)
    accept_env: list[str] = Field(
        default_factory=list, description="glob patterns of client variables to accept"
    )
    env: dict[str, str] = Field(default_factory=dict, description="set for every command")
    umask: Umask | None = Field(None, description="the commands' umask; default the server's")
    rlimits: dict[str, int] = Field(
        default_factory=dict, description="resource limits, e.g. {nofile = 1024, cpu = 60}"
    )
    put: bool = Field(True, description="false: refuse rexec put")
    get: bool = Field(True, description="false: refuse rexec get")
    file_roots: list[str] | None = Field(
        None, description="absolute directories put and get are confined to (symlinks out of"
                          " them refused); needed by an identity with a command policy")
    max_file_size: int | None = Field(None, gt=0, description="bytes per file put or got")

    @field_validator("file_roots")
    @classmethod
    def _absolute_roots(cls, values: list[str] | None) -> list[str] | None:
        for root in values or ():
            if not root.startswith("/") or "\0" in root or ".." in root.split("/"):
                raise ValueError(f"file_roots: {root!r} must be an absolute path without '..'")
        return values

    @field_validator("env")
    @classmethod
    def _env_names(cls, values: dict[str, str]) -> dict[str, str]:
        return _check_env(values)

    @field_validator("rlimits")
    @classmethod
    def _known_limits(cls, values: dict[str, int]) -> dict[str, int]:
        for name, limit in values.items():
            if name not in RLIMIT_NAMES:
                raise ValueError(f"unknown resource limit {name!r}"
                                 f" (known: {', '.join(sorted(RLIMIT_NAMES))})")
            if limit < 0:
                raise ValueError(f"resource limit {name} must be 0 or more, not {limit}")
        return values

    @field_validator("token_hash")
    @classmethod
    def _hash_parses(cls, value: str | None) -> str | None:
        if value is not None:
            TokenVerifier.parse(value)
        return value

    @field_validator("certificate")
    @classmethod
    def _subject_parses(cls, value: str | None) -> str | None:
        if value is not None:
            from rexec.tls import parse_subject

            try:
                parse_subject(value)
            except ValueError as exc:
                raise ValueError(f"bad certificate subject {value!r}: {exc}") from None
        return value

    @field_validator("allow", "deny")
    @classmethod
    def _patterns_compile(cls, values: list[str], info: ValidationInfo) -> list[str]:
        from rexec.server.patterns import Pattern, PatternError  # RE2: the server's side only

        for n, pattern in enumerate(values):
            try:
                Pattern(pattern, never_nl=info.field_name == "allow")
            except PatternError as exc:
                raise ValueError(f"bad regular expression {pattern!r}"
                                 f" ({info.field_name}[{n}]): {exc}{_re2_hint(pattern)}") from None
        return values

    @field_validator("cwd")
    @classmethod
    def _absolute(cls, values: list[Path]) -> list[Path]:
        for path in values:
            if not path.is_absolute():
                raise ValueError(f"working directory {str(path)!r} must be absolute")
        return [Path(os.path.realpath(p)) for p in values]

    @field_validator("run_as")
    @classmethod
    def _user_exists(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                pwd.getpwnam(value)
            except KeyError:
                raise ValueError(f"no such user {value!r}") from None
        return value

    @model_validator(mode="after")
    def _some_proof(self) -> IdentitySettings:
        if self.token_hash is None and self.certificate is None:
            raise ValueError("an identity needs token_hash, certificate, or both")
        return self

    def identity(self, name: str) -> Identity:
        """The runtime Identity for this table."""
        import resource

        from rexec.server.identity import Identity, Policy
        from rexec.server.patterns import Pattern
        from rexec.tls import parse_subject

        policy = Policy(
            allow=tuple(Pattern(p, never_nl=True) for p in self.allow),
            deny=tuple(Pattern(p) for p in self.deny),
            shell=self.shell, pty=self.pty, cwd=tuple(self.cwd), max_timeout=self.max_timeout,
            max_output=self.max_output, run_as=self.run_as,
            max_connections=self.max_connections, max_commands=self.max_commands,
            accept_env=tuple(self.accept_env), env=dict(self.env), umask=self.umask,
            rlimits=tuple((getattr(resource, RLIMIT_NAMES[name]), limit)
                          for name, limit in self.rlimits.items()),
            put=self.put, get=self.get,
            file_roots=None if self.file_roots is None else tuple(self.file_roots),
            max_file_size=self.max_file_size,
        )
        verifier = TokenVerifier.parse(self.token_hash) if self.token_hash else None
        subject = parse_subject(self.certificate) if self.certificate is not None else None
        return Identity(name, verifier, subject, policy)


def _re2_hint(pattern: str) -> str:
    """Why a pattern Python's ``re`` takes is refused: RE2 is not ``re``."""
    try:
        re.compile(pattern)
    except re.error:
        return ""
    return ("; rexec matches with RE2, which has no backreferences or lookaround and caps"
            " repetition counts at 1000, so that matching takes linear time")


IdentityKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class ServerSettings(_Settings):
    """What ``rexec-server`` runs with."""

    host: str | tuple[str, ...] = Field(
        defaults.HOST, description="address to listen on, or a list of them (as sshd's"
                                   " ListenAddress): one socket each")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls: Literal["auto"] | None = Field(
        None, description='"auto": a self-signed certificate made once into ~/.rexec (rexec.pki)')
    dangerously_allow_plaintext: bool = Field(
        False, description="allow listening off loopback without TLS (a trusted network only)"
    )
    kill_grace: float = Field(defaults.KILL_GRACE, ge=0, le=3600,
                              description="SIGTERM to SIGKILL, seconds")
    shutdown_grace: float = Field(
        defaults.SHUTDOWN_GRACE, ge=0, le=86400,
        description="on SIGTERM, seconds running commands get to finish (a second signal: now)",
    )
    keepalive: float = Field(
        KEEPALIVE, ge=0, le=7200,
        description="seconds before TCP keepalive probes; a vanished client is found in ~2x",
    )
    splice: bool = Field(
        True, description="plaintext: move command output from its pipes into the socket in"
                          " the kernel (os.splice, Linux); false: read and send it",
    )
    drain_grace: float = Field(
        defaults.DRAIN_GRACE, ge=0, le=60,
        description="after the shell exits, seconds of quiet before its pipes are let go",
    )
    handshake_timeout: float = Field(
        defaults.HANDSHAKE_TIMEOUT, gt=0, le=600,
        description="seconds a client has to authenticate",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    identities: dict[IdentityKey, IdentitySettings] = Field(default_factory=dict)
    audit_log: Path | None = None
    max_output: int | None = Field(None, gt=0, description="bytes per command, all identities")
    max_command_length: int = Field(MAX_COMMAND_LENGTH, ge=1, le=MAX_COMMAND_LENGTH)
    max_env_bytes: int = Field(defaults.MAX_ENV_BYTES, ge=0, le=1024 * 1024)
    max_startups: int | str = Field(
        defaults.MAX_STARTUPS,
        description='unauthenticated connections: "start:rate:full" (as sshd) or N (= N:100:N)',
    )
    per_source_max_startups: int = Field(
        defaults.PER_SOURCE_MAX_STARTUPS, ge=1, le=100_000,
        description="unauthenticated connections from one IP address",
    )
    idle_timeout: float = Field(defaults.IDLE_TIMEOUT, ge=0,
                                description="seconds; 0 turns it off")
    auth_penalty_max: float = Field(defaults.AUTH_PENALTY_MAX, ge=0, le=8,
                                    description="seconds, per source")
    path: str | None = Field(
        None, min_length=1, description="every command's PATH (default: exec.env.DEFAULT_PATH)"
    )
    env: dict[str, str] = Field(default_factory=dict, description="set for every command")
    inherit_env: list[str] = Field(
        default_factory=list, description="server variables passed on (globs; never REXEC_*)"
    )
    umask: Umask = Field(defaults.UMASK,
                         description="every command's umask (an identity may override)")
    name: str | None = Field(
        None, min_length=1, max_length=64,
        description="the name authenticated discovery replies give (default: the host name)")
    discovery: bool = Field(
        True, description="answer UDP probes (rexec ping, rexec discover) on the TCP port's"
                          " number, on every address listened on; false binds no UDP socket")
    discovery_rate: float = Field(
        defaults.DISCOVERY_RATE, gt=0, le=1_000_000,
        description="probes answered per second from one source (IPv4 address, IPv6 /64)")
    discovery_burst: int = Field(
        defaults.DISCOVERY_BURST, ge=1, le=1_000_000,
        description="probes one source may send at once before its rate applies")
    discovery_global_rate: float = Field(
        defaults.DISCOVERY_GLOBAL_RATE, gt=0, le=10_000_000,
        description="probes answered per second from all sources together")
    discovery_global_burst: int = Field(
        defaults.DISCOVERY_GLOBAL_BURST, ge=1, le=10_000_000,
        description="probes all sources together may send at once")

    @field_validator("env")
    @classmethod
    def _env_names(cls, values: dict[str, str]) -> dict[str, str]:
        return _check_env(values)

    @field_validator("host", mode="before")
    @classmethod
    def _unbracketed(cls, value: object) -> object:
        # "[::1]" is how addresses are written (and copied from "listening on [::1]:7878")
        if isinstance(value, str):
            return _unbracket(value)
        if not isinstance(value, list | tuple):
            return value  # pydantic says what is wrong with it
        hosts = [_unbracket(host) if isinstance(host, str) else host for host in value]
        if not hosts:
            raise ValueError("an empty list: give at least one address")
        repeated = sorted({str(host) for host in hosts if hosts.count(host) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} given twice")
        # one address is the string it always was: a reload compares it with the running one
        return hosts[0] if len(hosts) == 1 else tuple(hosts)

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every address to listen on."""
        return (self.host,) if isinstance(self.host, str) else self.host

    @field_validator("max_startups", mode="before")
    @classmethod
    def _startups_parse(cls, value: object) -> object:
        from rexec.server.limits import MaxStartups  # the server's alone: the client never loads it

        return str(MaxStartups.parse(value))  # ValueError names what is wrong

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls == "auto" and self.tls_cert is not None:
            raise ValueError('tls = "auto" makes its own certificate: drop tls_cert and tls_key')
        if self.tls_client_ca is not None and self.tls_cert is None and self.tls is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)")
        return self
