"""Who a client is, and what it may do: identities, how they authenticate, and command policy.

An identity authenticates with a token (the server keeps only its hash, see
``rexec.wire.auth``), with a TLS client certificate subject, or with both. Its policy decides,
before anything is started, whether a ``run`` is allowed and with which limits. The shared
server token, when one is configured, is the identity "default", with no restrictions.

What a policy on shell command strings can and cannot do: ``allow``/``deny`` patterns are
anchored RE2 regular expressions (``rexec.server.patterns``: linear-time matching) matched
against the whole command line. With the shell (the default), ``allow = ["uptime"]`` admits exactly
``uptime``; but a pattern such as ``ls .*`` admits ``ls ; rm -rf /``, because the shell gives
``;``, ``|``, ``$( )``, redirections and more their meaning. Write patterns that exclude shell
syntax, or set ``shell = false``: the command line is then split like a shell would split words
(no expansion, no operators), the patterns see the words re-quoted canonically
(``shlex.join``: ``i''d`` and ``"id"`` are ``id``, ``a\\ b`` is ``'a b'``), and the words are run
directly. A newline separates commands for the shell, so an identity with an allow list is
refused any command containing one (rule ``newline``), and allow patterns never match one.
With the shell, deny lists are no boundary: quoting (``i''d``), variables and globbing spell a
denied command in ways no pattern foresees.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rexec.server.exec.env import is_unsafe, matches_any
from rexec.server.exec.workdir import WorkDir, open_workdir
from rexec.wire.auth import TokenVerifier, decoy_salt
from rexec.wire.frames import AuthMethod, Run

if TYPE_CHECKING:
    from rexec.server.patterns import Pattern
    from rexec.tls import Subject

DEFAULT_IDENTITY = "default"


@dataclass(frozen=True)
class Refusal:
    """Why a command is refused: the rule that refused it, for the client and the audit log."""

    rule: str
    message: str


@dataclass(frozen=True)
class Policy:
    """What one identity may run, where, and within which limits."""

    allow: tuple[Pattern, ...] = ()  # compiled with never_nl
    deny: tuple[Pattern, ...] = ()
    shell: bool = True
    pty: bool = True  # PTY sessions allowed (rexec shell, rexec run -t)
    cwd: tuple[Path, ...] = ()
    max_timeout: float | None = None
    max_output: int | None = None
    run_as: str | None = None
    max_connections: int | None = None
    max_commands: int | None = None
    accept_env: tuple[str, ...] = ("*",)  # glob patterns of the client variables it may set
    env: Mapping[str, str] = field(default_factory=dict)  # set for every command (SetEnv)
    umask: int | None = None  # None: the server's
    rlimits: tuple[tuple[int, int], ...] = ()  # (resource.RLIMIT_*, limit)
    put: bool = True  # rexec put allowed
    get: bool = True  # rexec get allowed
    file_roots: tuple[str, ...] | None = None  # put and get beneath these only (None: anywhere)
    max_file_size: int | None = None  # bytes, per file put or got

    @property
    def restricted(self) -> bool:
        """Whether a command policy holds this identity in (allow, deny, argv mode, cwd, run_as):
        such an identity never sets the variables that change how programs start."""
        return bool(self.allow or self.deny or not self.shell or self.cwd or self.run_as)

    def check_env(self, env: Mapping[str, str]) -> Refusal | None:
        """Refuse a client variable ``accept_env`` does not admit, or an unsafe one."""
        for name in env:
            if self.restricted and is_unsafe(name):
                return Refusal("accept_env", f"refused: environment variable {name} changes how"
                               " shells, loaders or interpreters start; a restricted identity"
                               " may not set it")
            if not matches_any(name, self.accept_env):
                return Refusal("accept_env", f"refused: environment variable {name} is not"
                               " accepted from this identity (accept_env)")
        return None

    def matched_text(self, command: str) -> str | Refusal:
        """What allow/deny see: the line, or without the shell its words re-quoted canonically."""
        if self.shell:
            return command
        # Match what runs, not how it is spelled: i''d and "id" both run id, so both read id.
        try:
            words = shlex.split(command)
        except ValueError as exc:
            return Refusal("shell", f"refused: cannot split the command line ({exc})")
        if not words:
            return Refusal("shell", "refused: an empty command line")
        return shlex.join(words)

    def _check_command(self, command: str) -> Refusal | None:
        """The deny, newline and allow rules (and, without the shell, splitting)."""
        text = self.matched_text(command)
        if isinstance(text, Refusal):
            return text
        for n, pattern in enumerate(self.deny):
            if pattern.fullmatch(text):
                return Refusal(f"deny[{n}]", f"refused by deny[{n}] = {pattern.pattern!r}")
        if not self.allow:
            return None
        if "\n" in command:
            return Refusal("newline", "refused: the command contains a newline, which a shell"
                           " treats as a command separator, so no allow pattern admits one")
        if not any(p.fullmatch(text) for p in self.allow):
            return Refusal("allow", "refused: the command matches no pattern of the allow list")
        return None

    def check(self, run: Run) -> Refusal | None:
        """The first rule ``run`` breaks, or None if it may run."""
        refusal = self._check_command(run.command)
        if refusal is not None:
            return refusal
        return None

    def working_directory(self, run: Run) -> WorkDir | None:
        """The directory the command starts in, opened and checked (the client's choice, else
        the first allowed one; None: the server's own). Raises WorkDirError."""
        requested = run.cwd if run.cwd is not None else str(self.cwd[0]) if self.cwd else None
        return None if requested is None else open_workdir(requested, self.cwd)

    def timeout(self, run: Run) -> float | None:
        """The client's timeout, capped by ``max_timeout`` (which also applies when none is set)."""
        if self.max_timeout is None:
            return run.timeout
        return self.max_timeout if run.timeout is None else min(run.timeout, self.max_timeout)

    def argv(self, run: Run) -> list[str]:
        """The argument vector to execute."""
        if self.shell:
            return ["/bin/sh", "-c", run.command]
        return shlex.split(run.command)


UNRESTRICTED = Policy()


@dataclass(frozen=True)
class Identity:
    """A named client: how it proves itself, and its policy."""

    name: str
    verifier: TokenVerifier | None = None
    certificate: Subject | None = None  # required TLS client certificate subject (structured)
    policy: Policy = UNRESTRICTED

    def __post_init__(self) -> None:
        if self.verifier is None and self.certificate is None:
            raise ValueError(f"identity {self.name!r} needs a token verifier or a certificate")

    @property
    def method(self) -> str:
        """How the handshake proves this identity: "token" or "certificate"."""
        return "token" if self.verifier is not None else "certificate"


@dataclass
class Identities:
    """The server's identities, and how a connecting client is matched to one."""

    by_name: dict[str, Identity] = field(default_factory=dict)

    @classmethod
    def from_token(cls, token: str) -> Identities:
        """Just the shared token, as the unrestricted identity "default"."""
        return cls({DEFAULT_IDENTITY: Identity(DEFAULT_IDENTITY, TokenVerifier.from_token(token))})

    def resolve(self, name: str | None, subject: Subject | None) -> Identity | None:
        """The identity a client claims (by name), else the one its certificate names, else
        "default"; None when there is no such identity."""
        if name is not None:
            return self.by_name.get(name)
        if subject is not None:
            for identity in self.by_name.values():
                if identity.certificate == subject:
                    return identity
        return self.by_name.get(DEFAULT_IDENTITY)

    def challenge_for(self, identity: Identity | None, name: str | None,
                      subject: Subject | None) -> tuple[AuthMethod, bytes | None]:
        """The method and salt to challenge with, revealing nothing about unknown names.

        "certificate" only when the client's certificate already matches the identity; every
        other case is a token challenge, with a decoy salt when there is no such token. Decoys
        are stable across restarts (derived from the configured keys), like real salts.
        """
        if identity is not None and identity.verifier is None:
            if identity.certificate == subject:
                return "certificate", None
            return "token", decoy_salt(self._decoy_secret(), name or "")
        if identity is not None and identity.verifier is not None:
            return "token", identity.verifier.salt
        return "token", decoy_salt(self._decoy_secret(), name or "")

    def discovery_key(self, name: str) -> tuple[bytes, TokenVerifier | None]:
        """An identity's salt and verifier for a discovery probe: a decoy salt and None for a
        name that does not exist or has no token, so a reply reveals nothing about names."""
        identity = self.by_name.get(name)
        if identity is not None and identity.verifier is not None:
            return identity.verifier.salt, identity.verifier
        return decoy_salt(self._decoy_secret(), name), None

    def _decoy_secret(self) -> bytes:
        keys = sorted(i.verifier.stored_key + i.verifier.server_key
                      for i in self.by_name.values() if i.verifier is not None)
        return hashlib.sha256(b"rexec decoy salts\0" + b"".join(keys)).digest()
