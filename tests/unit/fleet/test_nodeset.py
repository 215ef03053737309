"""Node-set patterns: ranges, set operations, groups, malformed input, folding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rexec.errors import ConfigError
from rexec.fleet.nodeset import (
    PatternError,
    expand,
    expand_range,
    fold,
    is_pattern,
    split_items,
)

GROUPS = {
    "web": ["web[01-05]"],
    "prod": ["web[01-03]", "db1"],
    "all": ["@web", "@db"],
    "db": ["db[1-2]"],
    "loop": ["@pool"],
    "pool": ["x1", "@loop"],
}


def resolve(pattern: str) -> list[str]:
    return expand(pattern, GROUPS.get)


@pytest.mark.parametrize(("pattern", "hosts"), [
    ("web1", ["web1"]),
    ("web[01-03]", ["web01", "web02", "web03"]),
    ("web[8-11]", ["web8", "web9", "web10", "web11"]),
    ("web[098-101]", ["web098", "web099", "web100", "web101"]),
    ("web[1-3,7]", ["web1", "web2", "web3", "web7"]),
    ("web[1-9/4]", ["web1", "web5", "web9"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("127.0.0.[2-4]", ["127.0.0.2", "127.0.0.3", "127.0.0.4"]),
    ("127.0.0.[2-3]:7879", ["127.0.0.2:7879", "127.0.0.3:7879"]),
    ("[::1]:7878,[::2]", ["[::1]:7878", "[::2]"]),
])
def test_ranges_expand_with_their_leading_zeros(pattern: str, hosts: list[str]) -> None:
    assert expand(pattern) == hosts


@pytest.mark.parametrize(("pattern", "hosts"), [
    ("b1,a1,c1", ["b1", "a1", "c1"]),  # the order they appear in, not sorted
    ("a1,b1,a1", ["a1", "b1"]),  # no duplicates
    ("web[01-03],web[02-04]", ["web01", "web02", "web03", "web04"]),
    ("web[01-05]!web03", ["web01", "web02", "web04", "web05"]),
    ("web[01-05],!web03", ["web01", "web02", "web04", "web05"]),  # Ansible's way
    ("web[01-05]&web[04-09]", ["web04", "web05"]),
    ("web[01-05],&web[04-09]", ["web04", "web05"]),
    ("web[01-03]!web[01-03]", []),
    ("web[1-3],x!web2", ["web1", "web3", "x"]),  # left to right: (web[1-3],x)!web2
    ("web[1-3]!web2,web2", ["web1", "web3", "web2"]),
    ("web[1-4]&web[2-5]!web3", ["web2", "web4"]),
    (" web1 , web2 ", ["web1", "web2"]),
])
def test_set_operations_read_left_to_right(pattern: str, hosts: list[str]) -> None:
    assert expand(pattern) == hosts


@pytest.mark.parametrize(("pattern", "hosts"), [
    ("@web", ["web01", "web02", "web03", "web04", "web05"]),
    ("@web,!web03", ["web01", "web02", "web04", "web05"]),
    ("@web!web03", ["web01", "web02", "web04", "web05"]),
    ("@web&@prod", ["web01", "web02", "web03"]),
    ("@web,&@prod", ["web01", "web02", "web03"]),
    ("@all", ["web01", "web02", "web03", "web04", "web05", "db1", "db2"]),  # nested
    ("@all!@web", ["db1", "db2"]),
    ("@prod,web09", ["web01", "web02", "web03", "db1", "web09"]),
])
def test_groups_resolve_through_the_callable_recursively(pattern: str, hosts: list[str]) -> None:
    assert resolve(pattern) == hosts


@pytest.mark.parametrize(("pattern", "named"), [
    ("web[5-1]", "web[5-1]"),
    ("web[01-", "web[01-"),
    ("a,web[1-2", "web[1-2"),
    ("web]1", "web]"),
    ("web[a-b]", "web[a-b]"),
    ("a,,b", "item 2"),
    ("a,", "item 2"),
    ("a!", "after '!'"),
    ("a&", "after '&'"),
    ("!a", "'!' needs hosts on its left"),
    ("", "empty pattern"),
    ("@nope", "'@nope'"),
    ("web1,@", "'@'"),
    ("user@host", "user@host"),
    ("@loop", "@loop -> @pool -> @loop"),
])
def test_malformed_input_is_a_pattern_error_naming_the_part(pattern: str, named: str) -> None:
    with pytest.raises(PatternError) as caught:
        resolve(pattern)
    assert named in str(caught.value)
    assert isinstance(caught.value, ConfigError)  # a usage error (exit 2) in the CLI


def test_without_a_resolver_every_group_is_unknown() -> None:
    with pytest.raises(PatternError, match="unknown group '@web'"):
        expand("@web")


def test_brackets_protect_the_commas_of_a_range() -> None:
    assert split_items("web[1-3,7],db[1,2]!db2") == [
        (",", "web[1-3,7]"), (",", "db[1,2]"), ("!", "db2")]
    assert split_items("@web,!web03,&@prod") == [(",", "@web"), ("!", "web03"), ("&", "@prod")]


@pytest.mark.parametrize(("hosts", "folded"), [
    (["web01", "web02", "web03", "web04", "web05", "web07"], "web[01-05,07]"),
    ([f"127.0.0.{i}" for i in range(2, 22)], "127.0.0.[2-21]"),
    (["web1"], "web1"),
    (["b1", "a1"], "a1,b1"),
    ([], ""),
])
def test_fold_gives_the_folded_node_set(hosts: list[str], folded: str) -> None:
    assert fold(hosts) == folded


@pytest.mark.parametrize(("text", "pattern"), [
    ("web1", False), ("web1:7878", False), ("127.0.0.1", False), ("[::1]:7878", False),
    ("[::1]", False), ("[fe80::1%eth0]:7878", False), ("db.example.net", False),
    ("web[01-20]", True), ("@web", True), ("a,b", True), ("a!b", True), ("a&b", True),
    ("127.0.0.[2-21]", True), ("[1-3]", True), ("[::1]:7878,[::2]:7878", True),
])
def test_is_pattern_tells_a_pattern_from_one_address(text: str, pattern: bool) -> None:
    assert is_pattern(text) is pattern


NAMES = st.tuples(st.sampled_from(["web", "db", "n", "rack1-n", "10.0.0."]),
                  st.integers(0, 120), st.sampled_from([1, 2, 3]))


@given(st.lists(NAMES, min_size=1, max_size=40))
def test_fold_then_expand_gives_back_the_same_hosts(parts: list[tuple[str, int, int]]) -> None:
    hosts = {f"{prefix}{number:0{width}d}" for prefix, number, width in parts}
    assert set(expand(fold(hosts))) == hosts


@given(st.lists(st.integers(0, 300), min_size=1, max_size=30, unique=True),
       st.sampled_from([1, 2, 3]))
def test_expand_of_a_range_folds_back_to_an_equal_set(numbers: list[int], width: int) -> None:
    pattern = f"web[{','.join(f'{n:0{width}d}' for n in numbers)}]"
    hosts = expand(pattern)
    assert set(expand(fold(hosts))) == set(hosts)
    assert len(hosts) == len(set(hosts))


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789._-", min_size=1,
               max_size=12))
def test_a_plain_name_expands_to_itself_as_nodeset_would(name: str) -> None:
    """The fast path for a name without a range gives what ClusterShell's NodeSet gives."""
    from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet

    assert expand_range(name) == [str(n) for n in NodeSet(name, resolver=RESOLVER_NOGROUP)]
