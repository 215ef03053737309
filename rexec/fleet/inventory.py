"""The inventory: hosts, groups and their settings from TOML; a pattern -> resolved Targets.

One file, or several (later files extend earlier ones)::

    [defaults]             port, token_file, identity, tls_*, connect_timeout, keepalive, vars
    [hosts.NAME]           address (default NAME), the same settings, vars;
                           NAME may be a range ("web[01-20]"): one host each
    [groups.NAME]          hosts (patterns), children (group names), vars

Found, highest first: the paths given (``--inventory``), ``$REXEC_INVENTORY``,
``~/.rexec/inventory.toml`` (``$REXEC_HOME``); none of them: an empty inventory, where a
pattern's hosts are host names with the built-in defaults. Variables merge defaults < groups
(parents before children) < host. Every error names the file, the table and the field.
Connection settings resolve through ``ConnectOptions.resolve``, so a token file named here
follows the same rules (owner-only mode) and a host without one falls back as ``rexec run``
does (REXEC_TOKEN, the client config, ~/.rexec/token).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rexec.client.options import ConnectOptions
from rexec.client.settings import parse_pin
from rexec.config import did_you_mean, read_toml
from rexec.errors import ConfigError
from rexec.fleet.nodeset import PatternError, expand, split_items
from rexec.fleet.target import Target
from rexec.tokens import default_home
from rexec.wire.address import DEFAULT_PORT, format_address, parse_address

TABLES = ("defaults", "hosts", "groups")
PATH_KEYS = ("token_file", "tls_ca", "tls_cert", "tls_key")
"""Settings naming files: relative to the inventory file that sets them."""
TRUST_KEYS = ("tls_ca", "tls_pin", "tls_tofu")
"""How the server is trusted is one choice: a host's replaces its defaults'."""


class InventoryError(ConfigError):
    """An inventory file that cannot be read or does not validate (names file, table, field)."""


class HostSettings(BaseModel):
    """The connection settings and variables of ``[defaults]`` and of each ``[hosts.NAME]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int | None = Field(default=None, ge=1, le=65535)
    token_file: Path | None = None
    identity: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_pin: str | None = None
    tls_tofu: bool | None = None
    connect_timeout: float | None = Field(default=None, gt=0, le=3600)
    keepalive: float | None = Field(default=None, ge=0, le=3600)
    vars: dict[str, Any] = Field(default_factory=dict)

    _pin_parses = field_validator("tls_pin")(parse_pin)  # as the client's: at load time

    def over(self, lower: HostSettings) -> HostSettings:
        """These settings over ``lower``'s: field by field, vars key by key."""
        mine = self.model_dump(exclude_unset=True, exclude={"vars"})
        base = lower.model_dump(exclude_unset=True, exclude={"vars"})
        if any(key in mine for key in TRUST_KEYS):
            for key in TRUST_KEYS:
                base.pop(key, None)
        return HostSettings.model_validate(
            {**base, **mine, "vars": {**lower.vars, **self.vars}})


class HostEntry(HostSettings):
    """One ``[hosts.NAME]`` table."""

    address: str | None = Field(default=None, min_length=1)


class GroupEntry(BaseModel):
    """One ``[groups.NAME]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: list[str] = Field(default_factory=list)
    children: list[str] = Field(default_factory=list)
    vars: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Host:
    """One inventory host: its name, where it is, its own settings, and the table it came from."""

    name: str
    address: str  # a host name or IP address, without the port
    settings: HostSettings
    where: str  # 'inventory FILE: [hosts."web[01-03]"]'


@dataclass(slots=True)
class HostGroup:
    """One inventory group, extended by every file that defines it."""

    name: str
    hosts: list[tuple[str, str]] = field(default_factory=list)  # (pattern, where)
    children: list[tuple[str, str]] = field(default_factory=list)  # (group name, where)
    vars: dict[str, Any] = field(default_factory=dict)
    where: str = ""


def default_inventory_paths() -> list[Path]:
    """Where the inventory is when no file is given: $REXEC_INVENTORY (paths separated by
    ':'), else ~/.rexec/inventory.toml if it exists, else nowhere."""
    env = os.environ.get("REXEC_INVENTORY")
    if env:
        return [Path(part).expanduser() for part in env.split(os.pathsep) if part]
    path = default_home() / "inventory.toml"
    return [path] if path.exists() else []


class Inventory:
    """Hosts and groups from inventory files; patterns resolve to Targets."""

    def __init__(self, *, config: Path | None = None,
                 overrides: Mapping[str, Any] | None = None, token_required: bool = True) -> None:
        self.paths: list[Path] = []
        self.defaults = HostSettings()
        self.hosts: dict[str, Host] = {}
        self.groups: dict[str, HostGroup] = {}
        self.config = config  # the client config ConnectOptions.resolve reads (None: default)
        self.token_required = token_required  # false: a host may resolve without a token (ping)
        # settings given on the command line: over every host's, as ssh's options override
        # ~/.ssh/config (a way of trusting the server replaces the host's way)
        given = {key: value for key, value in (overrides or {}).items()
                 if value is not None and value is not False and key != "config"}
        self.overrides = HostSettings.model_validate(given) if given else None
        self._members: dict[str, set[str]] = {}
        self._order: list[str] = []  # groups, parents before children
        self._resolved: dict[tuple[Any, ...], ConnectOptions] = {}

    @classmethod
    def load(cls, paths: Sequence[Path] | None = None, *, config: Path | None = None,
             overrides: Mapping[str, Any] | None = None,
             token_required: bool = True) -> Inventory:
        """Load the files given (later ones extend earlier ones), else the default inventory.

        ``overrides``: connection settings (ConnectOptions.resolve's keywords, None: not given)
        that replace every host's, as command-line flags do. InventoryError naming the file,
        table and field of anything wrong; an empty inventory when no file is given and none
        exists where the defaults say. ``token_required`` false: hosts without a token resolve
        (their ``options.token`` None), for the commands that work without one.
        """
        inventory = cls(config=config, overrides=overrides, token_required=token_required)
        for path in paths or default_inventory_paths():
            inventory._add_file(Path(path))
        inventory._link()
        return inventory

    def __contains__(self, name: object) -> bool:
        return name in self.hosts

    def __iter__(self) -> Iterator[str]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def group_members(self, name: str) -> Sequence[str] | None:
        """A group's member patterns (its hosts, then @child for each child); None if unknown."""
        group = self.groups.get(name)
        if group is None:
            return None
        return [pattern for pattern, _ in group.hosts] + [f"@{child}" for child, _ in
                                                          group.children]

    def expand(self, pattern: str) -> list[str]:
        """The host names a pattern names (PatternError if malformed or matching nothing)."""
        names = expand(pattern, self.group_members)
        if not names:
            raise PatternError(f"pattern {pattern!r} matches no host")
        return names

    def resolve(self, pattern: str) -> list[Target]:
        """The Targets a pattern names: inventory hosts by name, other names as host names or
        addresses with the inventory's defaults (PatternError, InventoryError, ConfigError)."""
        return [self._target(name) for name in self.expand(pattern)]

    def target(self, name: str) -> Target:
        """One inventory host's Target (PatternError if the inventory has no such host)."""
        if name not in self.hosts:
            raise PatternError(f"no host {name!r} in the inventory")
        return self._target(name)

    def vars(self, name: str) -> dict[str, Any]:
        """A host's variables: defaults < its groups (parents before children) < its own."""
        merged = dict(self.defaults.vars)
        for group in self._order:
            if name in self._members[group]:
                merged.update(self.groups[group].vars)
        host = self.hosts.get(name)
        if host is not None:
            merged.update(host.settings.vars)
        return merged

    def settings(self, name: str) -> HostSettings:
        """A name's connection settings: its own over the defaults (vars merged as ``vars``)."""
        host = self.hosts.get(name)
        merged = self.defaults if host is None else host.settings.over(self.defaults)
        if self.overrides is not None:
            merged = self.overrides.over(merged)
        return merged.model_copy(update={"vars": self.vars(name)})

    def _target(self, name: str) -> Target:
        settings = self.settings(name)
        host = self.hosts.get(name)
        if host is not None:
            address = format_address(host.address, settings.port or DEFAULT_PORT)
            where = host.where
        else:
            parsed, port = parse_address(name, settings.port or DEFAULT_PORT)
            address = format_address(parsed, port)
            where = (f"host {name!r} (the inventory's [defaults])" if self.paths
                     else f"host {name!r}")
        try:
            options = self._options(address, settings)
        except ConfigError as exc:
            raise InventoryError(f"{where}: {exc}") from None
        return Target(name, options, settings.vars)

    def _options(self, address: str, settings: HostSettings) -> ConnectOptions:
        """ConnectOptions for one address; resolved once per distinct settings (the token file
        is read once, not once per host of a thousand)."""
        key = tuple(getattr(settings, name) for name in HostSettings.model_fields
                    if name not in ("vars", "port"))
        base = self._resolved.get(key)
        if base is None:
            base = ConnectOptions.resolve(
                address, config=self.config, token_file=settings.token_file,
                identity=settings.identity, tls_ca=settings.tls_ca,
                tls_cert=settings.tls_cert, tls_key=settings.tls_key,
                tls_pin=settings.tls_pin, tls_tofu=settings.tls_tofu,
                connect_timeout=settings.connect_timeout, keepalive=settings.keepalive,
                token_required=self.token_required)
            if settings.token_file is not None:
                base = dataclasses.replace(base, token_source=f"token_file {settings.token_file}")
            self._resolved[key] = base
        host, port = parse_address(address)
        return dataclasses.replace(base, address=address, host=host, port=port)

    # -- loading ---------------------------------------------------------------------------

    def _add_file(self, path: Path) -> None:
        data = _read(path)
        self.paths.append(path)
        where = f"inventory {path}"
        defaults = data.get("defaults", {})
        _need_table(defaults, f"{where}: [defaults]")
        own = _validate(HostSettings, _relative(defaults, path), f"{where}: [defaults]")
        self.defaults = own.over(self.defaults)
        hosts = data.get("hosts", {})
        _need_table(hosts, f"{where}: [hosts]")
        for name, table in hosts.items():
            self._add_hosts(name, table, path)
        groups = data.get("groups", {})
        _need_table(groups, f"{where}: [groups]")
        for name, table in groups.items():
            self._add_group(name, table, path)

    def _add_hosts(self, name: str, table: object, path: Path) -> None:
        where = f"inventory {path}: [hosts.{_key(name)}]"
        _need_table(table, where)
        assert isinstance(table, dict)
        entry = _validate(HostEntry, _relative(table, path), where)
        try:
            names = expand(name)
        except PatternError as exc:
            raise InventoryError(f"{where}: the name: {exc}") from None
        try:
            addresses = expand(entry.address) if entry.address else names
        except PatternError as exc:
            raise InventoryError(f"{where} address: {exc}") from None
        if len(addresses) == 1:
            addresses = addresses * len(names)
        elif len(addresses) != len(names):
            raise InventoryError(f"{where} address: {entry.address!r} names {len(addresses)}"
                                 f" addresses for {len(names)} hosts: give one, or as many")
        settings = HostSettings.model_validate(entry.model_dump(exclude_unset=True,
                                                                exclude={"address"}))
        for host_name, address in zip(names, addresses, strict=True):
            if ":" in address and address.count(":") == 1:
                raise InventoryError(f"{where} address: {address!r} has a port: give it as"
                                     " port = N")
            earlier = self.hosts.get(host_name)
            if earlier is not None:
                raise InventoryError(f"{where}: host {host_name!r} is already defined by"
                                     f" {earlier.where}")
            self.hosts[host_name] = Host(host_name, address.strip("[]"), settings, where)

    def _add_group(self, name: str, table: object, path: Path) -> None:
        where = f"inventory {path}: [groups.{_key(name)}]"
        _need_table(table, where)
        assert isinstance(table, dict)
        entry = _validate(GroupEntry, table, where)
        group = self.groups.setdefault(name, HostGroup(name, where=where))
        group.hosts += [(pattern, where) for pattern in entry.hosts]
        group.children += [(child, where) for child in entry.children]
        group.vars.update(entry.vars)

    def _link(self) -> None:
        """Check the groups (children known, no cycle, patterns that parse), expand each
        group's members, and order the groups parents before children."""
        for group in self.groups.values():
            for child, where in group.children:
                if child not in self.groups:
                    raise InventoryError(f"{where} children: unknown group {child!r}"
                                         f"{did_you_mean(child, self.groups)}")
        checked: set[str] = set()
        for name in self.groups:
            self._check_cycle(name, (), checked)
        for name, group in self.groups.items():
            members: dict[str, None] = {}
            for pattern, where in group.hosts:
                try:
                    members.update(dict.fromkeys(expand(pattern, self.group_members)))
                except PatternError as exc:
                    raise InventoryError(f"{where} hosts: {exc}") from None
            for child, _ in group.children:
                members.update(dict.fromkeys(expand(f"@{child}", self.group_members)))
            self._members[name] = set(members)
        self._order = self._parents_first()

    def _check_cycle(self, name: str, chain: tuple[str, ...], checked: set[str]) -> None:
        if name in chain:
            cycle = " -> ".join((*chain[chain.index(name):], name))
            where = dict(self.groups[chain[-1]].children)[name]
            raise InventoryError(f"{where} children: a cycle among groups: {cycle}")
        if name in checked:
            return
        for child, _ in self.groups[name].children:
            self._check_cycle(child, (*chain, name), checked)
        checked.add(name)

    def _parents_first(self) -> list[str]:
        """The groups by depth (a group after every group containing it, as a child or as
        @NAME in its hosts), groups of one depth in the order they were defined."""
        parents: dict[str, set[str]] = {name: set() for name in self.groups}
        for name, group in self.groups.items():
            contained = [child for child, _ in group.children]
            contained += [operand[1:] for pattern, _ in group.hosts
                          for op, operand in split_items(pattern)
                          if op == "," and operand.startswith("@")]
            for child in contained:
                if child in parents and child != name:
                    parents[child].add(name)
        depth: dict[str, int] = {}

        def depth_of(name: str) -> int:
            if name not in depth:
                depth[name] = 0  # a cycle through @NAME: expand() has refused it already
                depth[name] = 1 + max((depth_of(p) for p in parents[name]), default=-1)
            return depth[name]

        position = {name: i for i, name in enumerate(self.groups)}
        return sorted(self.groups, key=lambda name: (depth_of(name), position[name]))


def _read(path: Path) -> dict[str, Any]:
    data = read_toml(path, "inventory", InventoryError)
    for key in data:
        if key not in TABLES:
            raise InventoryError(f"inventory {path}: unknown table {key!r}"
                                 f"{did_you_mean(key, TABLES)} (expected: {', '.join(TABLES)})")
    return data


def _need_table(value: object, where: str) -> None:
    if not isinstance(value, dict):
        raise InventoryError(f"{where}: must be a table")


def _relative(table: dict[str, Any], path: Path) -> dict[str, Any]:
    """The table with its file settings relative to the inventory file's folder."""
    return {key: str(path.parent / Path(value).expanduser())
            if key in PATH_KEYS and isinstance(value, str) else value
            for key, value in table.items()}


ModelT = TypeVar("ModelT", bound=BaseModel)


def _validate(model: type[ModelT], table: Mapping[str, Any], where: str) -> ModelT:
    try:
        return model.model_validate(table)
    except ValidationError as exc:
        problems = "; ".join(_describe(error, model, where)
                             for error in exc.errors(include_url=False, include_input=False))
        raise InventoryError(problems) from None


def _describe(error: Any, model: type[BaseModel], where: str) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{where} {loc}: unknown setting {loc!r}{did_you_mean(loc, model.model_fields)}"
    return f"{where} {loc}: {str(error['msg']).removeprefix('Value error, ')}"


def _key(name: str) -> str:
    """A table name as TOML writes it: bare, or quoted."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'
