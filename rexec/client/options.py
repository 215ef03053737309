"""ConnectOptions: every option of one connection, resolved once from flags, environment, config.

``Client``, ``BlockingClient``, ``rexec.run`` and ``rexec run`` all take the same eleven
connection keywords; each turns them into one ConnectOptions here, so the merge order (the
keywords over the environment over the config file, then the token lookup) is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from rexec.client.known_hosts import default_known_hosts
from rexec.client.settings import ClientSettings, client_settings
from rexec.sockets import KEEPALIVE
from rexec.wire.address import parse_address


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Where to connect, as whom, how secured and how long to wait: resolved, immutable."""

    address: str
    host: str
    port: int
    token: str | None = field(repr=False)  # never shown: messages and reprs hide the token
    identity: str | None
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    connect_timeout: float
    settings: ClientSettings = field(repr=False, compare=False)  # what they were resolved from
    token_source: str = ""  # where the token came from, without its value ("REXEC_TOKEN"...)
    tls_pin: str | None = None  # the server certificate's fingerprint, SHA256:<base64>
    tls_tofu: bool = False  # trust the first certificate seen, as recorded in known_hosts
    known_hosts: Path = field(default_factory=default_known_hosts)
    keepalive: float = KEEPALIVE  # seconds of silence before probing for a dead server

    @property
    def uses_tls(self) -> bool:
        """Whether the connection is TLS (the server trusted through a CA, a pin or tofu)."""
        return self.tls_ca is not None or self.tls_pin is not None or self.tls_tofu

    @classmethod
    def resolve(
        cls,
        address: str,
        *,
        token: str | None = None,
        token_file: str | Path | None = None,
        config: str | Path | None = None,
        connect_timeout: float | None = None,
        keepalive: float | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        tls_pin: str | None = None,
        tls_tofu: bool | None = None,
        identity: str | None = None,
        token_required: bool = True,
    ) -> ConnectOptions:
        """Resolve the keywords (None: not given) over the environment and the config file.

        ConfigError for a bad address (checked first), a bad config or no token anywhere
        (unless ``token_required`` is false: then ``token`` may be None).
        """
        host, port = parse_address(address)
        settings, resolved_token, token_source = client_settings(
            token=token, token_file=token_file, config=config, connect_timeout=connect_timeout,
            keepalive=keepalive, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, tls_pin=tls_pin,
            tls_tofu=tls_tofu, identity=identity, token_required=token_required,
        )
        return cls(
            address=address, host=host, port=port, token=resolved_token,
            identity=settings.identity, tls_ca=settings.tls_ca, tls_cert=settings.tls_cert,
            tls_key=settings.tls_key, connect_timeout=settings.connect_timeout, settings=settings,
            token_source=token_source, tls_pin=settings.tls_pin, tls_tofu=settings.tls == "tofu",
            known_hosts=settings.known_hosts or default_known_hosts(),
            keepalive=settings.keepalive,
        )


class OptionsClient:
    """What both clients share: the connection keywords, resolved once into ``options``."""

    options: ConnectOptions

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        token_file: str | Path | None = None,
        config: str | Path | None = None,
        connect_timeout: float | None = None,
        keepalive: float | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        tls_pin: str | None = None,
        tls_tofu: bool | None = None,
        identity: str | None = None,
    ) -> None:
        self._setup(ConnectOptions.resolve(
            address, token=token, token_file=token_file, config=config,
            connect_timeout=connect_timeout, keepalive=keepalive, tls_ca=tls_ca,
            tls_cert=tls_cert, tls_key=tls_key, tls_pin=tls_pin, tls_tofu=tls_tofu,
            identity=identity,
        ))

    @classmethod
    def from_options(cls, options: ConnectOptions) -> Self:
        """A client for connection options already resolved (``ConnectOptions.resolve``)."""
        client = cls.__new__(cls)
        client._setup(options)
        return client

    def _setup(self, options: ConnectOptions) -> None:
        self.options = options
        self.address, self.host, self.port = options.address, options.host, options.port
        self.settings = options.settings
