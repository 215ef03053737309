"""The environment every command starts with, built in one place from what is configured.

Nothing of the server's own environment reaches a command unless the operator names it in
``inherit_env`` (and never a ``REXEC_*`` variable, the token among them): a command sees

1. ``PATH`` (``DEFAULT_PATH`` or the configured ``path``), and ``HOME``, ``USER``, ``LOGNAME``
   and ``SHELL`` of the user it runs as, from the password database;
2. the server variables ``inherit_env`` names (glob patterns, ``LANG``, ``LC_*``, ``TZ``...);
3. the variables the client sent (``-e``), once the identity's ``accept_env`` admitted them;
4. the server's configured ``env``, then the identity's ``env`` (as sshd's SetEnv, these win
   over what the client sent);
5. ``REXEC_IDENTITY`` (the identity's name) and ``REXEC_CLIENT`` (``client-ip client-port
   server-port``, as ssh's ``SSH_CLIENT``), which no one else can set;
6. ``PWD``: the directory the command starts in, as a shell would export it.

``UNSAFE_NAMES`` are the variables that change how shells, the dynamic loader and interpreters
start, so that an allowed program runs code of the client's choosing: an identity with a command
policy never gets to set them, whatever its ``accept_env`` says.
"""

from __future__ import annotations

import fnmatch
import os
import pwd
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The PATH of every command unless ``path`` is configured (Debian's PATH for root)."""

UNSAFE_NAMES: tuple[str, ...] = (
    # the dynamic loader and the C library
    "LD_*", "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN",
    "LOCPATH", "MALLOC_*", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR",
    "TZDIR",
    # shells
    "BASH_ENV", "ENV", "BASH_FUNC_*", "SHELLOPTS", "BASHOPTS", "PS1", "PS2", "PS3", "PS4",
    "PROMPT_COMMAND", "BASH_XTRACEFD", "IFS", "CDPATH", "GLOBIGNORE", "ZDOTDIR", "PATH", "HOME",
    "SHELL", "USER", "LOGNAME",
    # interpreters and runtimes
    "PYTHON*", "PERL5*", "PERLLIB", "PERL_*", "RUBYOPT", "RUBYLIB", "NODE_OPTIONS", "NODE_PATH",
    "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH", "LUA_INIT*",
    "LUA_PATH*", "LUA_CPATH*", "TCLLIBPATH", "PHPRC", "PHP_INI_SCAN_DIR", "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    # programs that other programs start
    "GIT_*", "BROWSER", "EDITOR", "VISUAL", "PAGER", "MANPAGER", "LESSOPEN", "LESSCLOSE",
    "SSH_ASKPASS", "SUDO_ASKPASS",
    # rexec's own
    "REXEC_*",
)

AUDIT_VALUE_LIMIT = 200
"""Characters of each environment value kept in the audit log; longer ones are cut."""

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|PRIVATE|(^|_)API_?KEY$",
                          re.IGNORECASE)
"""Names whose values the audit log never records (``REXEC_TOKEN``, ``DB_PASSWORD``...)."""


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` matches one of the glob ``patterns`` (``*`` and ``?``, case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def is_unsafe(name: str) -> bool:
    """Whether ``name`` changes how shells, loaders or interpreters start (``UNSAFE_NAMES``)."""
    return matches_any(name, UNSAFE_NAMES)


@dataclass(frozen=True)
class Account:
    """What the environment says about the user a command runs as."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str


@lru_cache(maxsize=64)
def account(user: str | None) -> Account:
    """The password-database entry of ``user`` (None: the server's own); KeyError if none."""
    entry = pwd.getpwuid(os.geteuid()) if user is None else pwd.getpwnam(user)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir,
                   entry.pw_shell or "/bin/sh")


@dataclass(frozen=True)
class ChildEnvSettings:
    """The server-wide part of every command's environment (``[server]`` path/env/inherit_env)."""

    path: str = DEFAULT_PATH
    env: Mapping[str, str] = field(default_factory=dict)
    inherit_env: tuple[str, ...] = ()


def inherited(patterns: tuple[str, ...], environ: Mapping[str, str]) -> dict[str, str]:
    """The server variables ``inherit_env`` names; never a ``REXEC_*`` one."""
    if not patterns:
        return {}
    return {name: value for name, value in environ.items()
            if not name.startswith("REXEC_") and matches_any(name, patterns)}


def child_environment(
    settings: ChildEnvSettings,
    *,
    user: Account,
    client_env: Mapping[str, str],
    identity_env: Mapping[str, str],
    identity: str,
    client: str,
    pwd: str | None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of one command, in the order the module docstring gives.

    ``client_env`` must already have passed the identity's ``accept_env`` check; ``pwd`` is
    the directory the command starts in (None: leave PWD to the shell).
    """
    env = {"PATH": settings.path, "HOME": user.home, "USER": user.name, "LOGNAME": user.name,
           "SHELL": user.shell}
    env.update(inherited(settings.inherit_env, os.environ if environ is None else environ))
    env.update(client_env)
    env.update(settings.env)
    env.update(identity_env)
    env["REXEC_IDENTITY"] = identity
    env["REXEC_CLIENT"] = client
    if pwd is not None:
        env["PWD"] = pwd
    return env


def audit_env(env: Mapping[str, str]) -> dict[str, str]:
    """The client's environment as the audit log keeps it: secrets hidden, long values cut."""
    kept = {}
    for name, value in env.items():
        if _SECRET_NAME.search(name):
            kept[name] = f"<hidden: {len(value)} characters>"
        elif len(value) > AUDIT_VALUE_LIMIT:
            kept[name] = f"{value[:AUDIT_VALUE_LIMIT]}...<cut: {len(value)} characters>"
        else:
            kept[name] = value
    return kept
