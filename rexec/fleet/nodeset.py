"""Node-set patterns: ``web[01-20]``, ``@web``, and ``,`` ``!`` ``&`` between them, as clush.

The grammar is ClusterShell's, read left to right::

    pattern := item (OP item)*        OP := "," | "!" | "&" | ",!" | ",&"
    item    := "@" GROUP | RANGE      RANGE: web[01-20], web[1-3,7], rack[1-2]-n[01-04],
                                             web[1-9/2], 127.0.0.[2-21], or a plain name

``,`` is a union, ``!`` a difference, ``&`` an intersection; ``@web,!web03`` is
``@web!web03`` (Ansible's way of writing it). The top-level operators are split here (brackets
protect the commas of a range), each RANGE is expanded by ClusterShell without its group
resolver, and ``@GROUP`` by the caller's resolver, recursively: a group's members are patterns
too. The result keeps the order hosts first appear in, without duplicates.

ClusterShell (no type hints) is imported only to expand or fold: ``is_pattern`` is cheap, and
the one-host ``rexec run`` path never loads it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from rexec.errors import ConfigError

GroupResolver = Callable[[str], Sequence[str] | None]
"""A group's member patterns by its name (without ``@``), or None for an unknown group."""

OPERATORS = frozenset(",!&")
_V6_ADDRESS = re.compile(r"\[[^\[\],]*:[^\[\],]*\](:\d*)?")  # [::1] or [::1]:7878


class PatternError(ConfigError):
    """A node-set pattern that does not parse, names an unknown group, or matches nothing."""


def is_pattern(text: str) -> bool:
    """Whether a TARGET is a node-set pattern rather than one address or host name."""
    if any(char in text for char in "@,!&"):
        return True
    return "[" in text and _V6_ADDRESS.fullmatch(text) is None


def split_items(pattern: str) -> list[tuple[str, str]]:
    """The pattern's top-level items as (operator, operand); the first one's operator is ","."""
    raw: list[tuple[str, str]] = []
    op, start, depth = ",", 0, 0
    for i, char in enumerate(pattern):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise PatternError(f"pattern {pattern!r}: ']' without '[' in"
                                   f" {pattern[start:i + 1]!r}")
        elif char in OPERATORS and depth == 0:
            raw.append((op, pattern[start:i].strip()))
            op, start = char, i + 1
    if depth:
        raise PatternError(f"pattern {pattern!r}: '[' without ']' in {pattern[start:]!r}")
    raw.append((op, pattern[start:].strip()))
    items = []
    for k, (op, operand) in enumerate(raw):
        following = raw[k + 1][0] if k + 1 < len(raw) else None
        if operand:
            items.append((op, operand))
        elif k > 0 and op == "," and following in ("!", "&"):
            continue  # ",!" and ",&": the comma only introduces the operator
        elif len(raw) == 1:
            raise PatternError("empty pattern: expected a host, a range such as web[01-20],"
                               " or @GROUP")
        elif k == 0:
            raise PatternError(f"pattern {pattern!r}: {following!r} needs hosts on its left")
        else:
            raise PatternError(f"pattern {pattern!r}: an empty item after {op!r}"
                               f" (item {k + 1})")
    return items


def expand(pattern: str, groups: GroupResolver | None = None) -> list[str]:
    """The hosts a pattern names, in the order they first appear (PatternError if malformed).

    ``groups`` resolves ``@NAME``; without it, any group is unknown. A pattern matching no host
    returns an empty list: the caller says which pattern matched nothing.
    """
    return _expand(pattern, groups, ())


def _expand(pattern: str, groups: GroupResolver | None, within: tuple[str, ...]) -> list[str]:
    hosts: dict[str, None] = {}
    for op, operand in split_items(pattern):
        names = _operand_hosts(pattern, operand, groups, within)
        if op == ",":
            hosts.update(dict.fromkeys(names))
        elif op == "!":
            for name in names:
                hosts.pop(name, None)
        else:
            keep = set(names)
            hosts = {name: None for name in hosts if name in keep}
    return list(hosts)


def _operand_hosts(pattern: str, operand: str, groups: GroupResolver | None,
                   within: tuple[str, ...]) -> list[str]:
    if operand.startswith("@"):
        name = operand[1:]
        if name in within:
            chain = " -> ".join(f"@{group}" for group in (*within, name))
            raise PatternError(f"group cycle: {chain}")
        members = groups(name) if groups is not None and name else None
        if members is None:
            raise PatternError(f"pattern {pattern!r}: unknown group {operand!r}")
        found: dict[str, None] = {}
        for member in members:
            found.update(dict.fromkeys(_expand(member, groups, (*within, name))))
        return list(found)
    return expand_range(operand, pattern)


def expand_range(operand: str, pattern: str | None = None) -> list[str]:
    """One range operand (``web[01-20]``) as its host names (PatternError naming it if bad)."""
    if _PLAIN_NAME.fullmatch(operand):
        return [operand]  # what NodeSet makes of it, without its ~130 us of parsing
    from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetParseError

    if "@" in operand:
        raise PatternError(f"pattern {pattern or operand!r}: '@' may only start a group name"
                           f" (in {operand!r})")
    if _V6_ADDRESS.fullmatch(operand):
        return [operand]  # [::1]:7878 is one address, not a range
    try:
        return [str(name) for name in NodeSet(operand, resolver=RESOLVER_NOGROUP)]
    except NodeSetParseError as exc:
        where = f"pattern {pattern!r}: " if pattern and pattern != operand else ""
        raise PatternError(f"{where}bad range {operand!r}: {_reason(exc)}") from None


_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")
"""A host name or IPv4 address with no range in it: one host, itself (a 1,000-host inventory
names 1,000 of them; tests/unit/fleet/test_nodeset.py checks NodeSet agrees)."""


def _reason(exc: Exception) -> str:
    """ClusterShell's message without its repeated quoting of the part."""
    head, _, detail = str(exc).partition(": ")
    if len(detail) > 1 and detail[0] == detail[-1] == '"':
        detail = detail[1:-1]  # 'bad range: "invalid values in range : "5-1""'
    return detail.replace(" : ", " ") or head


def fold(hosts: Iterable[str]) -> str:
    """The folded node set of host names: ``web[01-05,07]``, ``127.0.0.[2-21]``."""
    from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet

    return str(NodeSet.fromlist(list(hosts), resolver=RESOLVER_NOGROUP))
