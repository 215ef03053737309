"""The inventory: loading, where files are found, variable merge order, each error case."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rexec.errors import ConfigError
from rexec.fleet.inventory import Inventory, InventoryError
from rexec.fleet.nodeset import PatternError
from tests.helpers import TOKEN, make_token_file, write_token


def write(folder: Path, text: str, name: str = "inventory.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def token(tmp_path: Path) -> Path:
    return write_token(tmp_path / "fleet.token")


BASIC = """
    [defaults]
    port = 7000
    token_file = "fleet.token"
    connect_timeout = 3.0
    vars = { site = "d", level = "defaults" }

    [hosts."web[01-03]"]
    address = "127.0.0.[2-4]"
    vars = { role = "web" }

    [hosts.db]
    address = "10.0.0.9"
    port = 7100
    identity = "dba"
    keepalive = 5
    vars = { level = "host" }

    [groups.web]
    hosts = ["web[01-03]"]
    vars = { level = "web", tier = "front" }

    [groups.prod]
    children = ["web"]
    hosts = ["db"]
    vars = { level = "prod", tier = "any", env = "prod" }
"""


def test_hosts_ranges_and_groups_load_and_resolve(tmp_path: Path, token: Path) -> None:
    inventory = Inventory.load([write(tmp_path, BASIC)])
    assert list(inventory) == ["web01", "web02", "web03", "db"]
    assert inventory.expand("@prod") == ["db", "web01", "web02", "web03"]
    assert inventory.expand("@prod!@web") == ["db"]
    web02, db = inventory.resolve("web02,db")
    assert (web02.name, web02.options.address, web02.options.port) == (
        "web02", "127.0.0.3:7000", 7000)
    assert web02.options.token == TOKEN
    assert web02.options.token_source == f"token_file {token}"  # relative to the file
    assert web02.options.connect_timeout == 3.0
    assert (db.options.address, db.options.identity) == ("10.0.0.9:7100", "dba")
    assert (web02.options.keepalive, db.options.keepalive) == (30.0, 5.0)


def test_vars_merge_defaults_then_parent_groups_then_children_then_the_host(
        tmp_path: Path, token: Path) -> None:
    inventory = Inventory.load([write(tmp_path, BASIC)])
    assert inventory.target("web01").vars == {
        "site": "d", "level": "web", "role": "web", "tier": "front", "env": "prod"}
    # prod (the parent) before web although web is defined first; the host last
    assert inventory.target("db").vars == {"site": "d", "level": "host", "tier": "any",
                                           "env": "prod"}


def test_a_name_the_inventory_does_not_list_is_a_host_name_with_the_defaults(
        tmp_path: Path, token: Path) -> None:
    inventory = Inventory.load([write(tmp_path, BASIC)])
    other, pinned = inventory.resolve("other.example.net,10.1.1.1:7999")
    assert (other.name, other.options.address) == ("other.example.net",
                                                   "other.example.net:7000")
    assert other.options.token == TOKEN and other.vars == {"site": "d", "level": "defaults"}
    assert pinned.options.address == "10.1.1.1:7999"


def test_no_inventory_file_is_an_empty_inventory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REXEC_TOKEN", TOKEN)
    inventory = Inventory.load()
    assert len(inventory) == 0 and inventory.paths == []
    (target,) = inventory.resolve("web1")
    assert (target.options.address, target.options.token_source) == ("web1:7878", "REXEC_TOKEN")
    with pytest.raises(PatternError, match="no host 'web1' in the inventory"):
        inventory.target("web1")


def test_a_host_without_a_token_source_falls_back_as_the_single_host_client(
        tmp_path: Path, isolated_home: Path) -> None:
    inventory = Inventory.load([write(tmp_path, '[hosts.a]\naddress = "127.0.0.2"\n')])
    with pytest.raises(InventoryError, match=r"\[hosts.a\]: no token"):
        inventory.resolve("a")
    write_token(isolated_home / "token")
    assert inventory.target("a").options.token_source == str(isolated_home / "token")


def test_a_shared_token_file_is_refused_naming_the_host(tmp_path: Path) -> None:
    make_token_file(tmp_path / "fleet.token", TOKEN, mode=0o644)
    inventory = Inventory.load([write(tmp_path, BASIC)])
    with pytest.raises(InventoryError) as caught:
        inventory.resolve("db")
    assert "[hosts.db]" in str(caught.value) and "chmod 600" in str(caught.value)


def test_found_highest_first(tmp_path: Path, isolated_home: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    home = write(isolated_home, "[hosts.from-home]\n")
    env = write(tmp_path, "[hosts.from-env]\n", "env.toml")
    given = write(tmp_path, "[hosts.given]\n", "given.toml")
    assert list(Inventory.load()) == ["from-home"]
    monkeypatch.setenv("REXEC_INVENTORY", str(env))
    assert list(Inventory.load()) == ["from-env"]
    assert list(Inventory.load([given])) == ["given"]
    assert Inventory.load([given]).paths == [given] and home.exists()


def test_later_files_extend_earlier_ones(tmp_path: Path, token: Path) -> None:
    first = write(tmp_path, BASIC, "a.toml")
    second = write(tmp_path, """
        [defaults]
        port = 7001
        vars = { level = "second" }
        [hosts.cache]
        [groups.web]
        hosts = ["cache"]
        vars = { tier = "edge" }
    """, "b.toml")
    inventory = Inventory.load([first, second])
    assert list(inventory) == ["web01", "web02", "web03", "db", "cache"]
    assert inventory.expand("@web") == ["web01", "web02", "web03", "cache"]
    cache = inventory.target("cache")
    assert cache.options.port == 7001 and cache.options.token == TOKEN  # defaults merged
    assert cache.vars["tier"] == "edge" and cache.vars["site"] == "d"


def test_a_hosts_trust_choice_replaces_the_defaults(tmp_path: Path, token: Path) -> None:
    path = write(tmp_path, """
        [defaults]
        token_file = "fleet.token"
        tls_tofu = true
        [hosts.a]
        tls_pin = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
        [hosts.b]
    """)
    inventory = Inventory.load([path])
    a, b = inventory.resolve("a,b")
    assert (a.options.tls_pin is not None, a.options.tls_tofu) == (True, False)
    assert (b.options.tls_pin, b.options.tls_tofu) == (None, True)


def test_a_pattern_matching_nothing_is_a_pattern_error_naming_it(tmp_path: Path) -> None:
    inventory = Inventory.load([write(tmp_path, BASIC)])
    with pytest.raises(PatternError, match=r"pattern '@web!web\[01-03\]' matches no host"):
        inventory.resolve("@web!web[01-03]")
    with pytest.raises(PatternError, match="unknown group '@nope'"):
        inventory.resolve("@nope")


@pytest.mark.parametrize(("text", "message"), [
    ("[hosts.a]\nprot = 1\n",
     r"\[hosts.a\] prot: unknown setting 'prot'; did you mean 'port'\?"),
    ("[defaults]\ntoken_fle = 'x'\n",
     r"\[defaults\] token_fle: unknown setting 'token_fle'; did you mean 'token_file'\?"),
    ("[groups.g]\nchildern = []\n",
     r"\[groups.g\] childern: unknown setting 'childern'; did you mean 'children'\?"),
    ("[host.a]\n", r"unknown table 'host'; did you mean 'hosts'\?"),
    ("[hosts.a]\nport = 0\n", r"\[hosts.a\] port: Input should be greater than or equal to 1"),
    ("[hosts.\"w[1-3]\"]\n[hosts.w2]\n",
     r"\[hosts.w2\]: host 'w2' is already defined by .*\[hosts.\"w\[1-3\]\"\]"),
    ("[hosts.\"w[3-1]\"]\n", r"\[hosts.\"w\[3-1\]\"\]: the name: bad range 'w\[3-1\]'"),
    ("[hosts.\"w[1-3]\"]\naddress = '10.0.0.[1-2]'\n",
     r"address: '10.0.0.\[1-2\]' names 2 addresses for 3 hosts"),
    ("[hosts.a]\naddress = 'h:7000'\n", r"\[hosts.a\] address: 'h:7000' has a port"),
    ("[groups.a]\nchildren = ['b']\n[groups.b]\nchildren = ['c']\n[groups.c]\nchildren = ['a']\n",
     r"\[groups.c\] children: a cycle among groups: a -> b -> c -> a"),
    ("[groups.a]\nchildren = ['wbe']\n[groups.web]\n",
     r"\[groups.a\] children: unknown group 'wbe'; did you mean 'web'\?"),
    ("[groups.a]\nhosts = ['w[1-']\n", r"\[groups.a\] hosts: pattern 'w\[1-'"),
    ("[groups.a]\nhosts = ['@b']\n[groups.b]\nhosts = ['@a']\n",
     r"\[groups.a\] hosts: group cycle"),
    ("hosts = 3\n", r": \[hosts\]: must be a table"),
    ("[hosts]\na = 1\n", r"\[hosts.a\]: must be a table"),
    ("[hosts.a\n", r"inventory .*inventory.toml: "),
])
def test_each_error_names_the_file_the_table_and_the_field(tmp_path: Path, text: str,
                                                         message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InventoryError, match=message) as caught:
        Inventory.load([path])
    assert str(caught.value).startswith(f"inventory {path}")
    assert isinstance(caught.value, ConfigError)


def test_a_duplicate_host_across_files_names_both(tmp_path: Path) -> None:
    first = write(tmp_path, "[hosts.\"web[1-3]\"]\n", "a.toml")
    second = write(tmp_path, "[hosts.web3]\n", "b.toml")
    with pytest.raises(InventoryError) as caught:
        Inventory.load([first, second])
    assert str(caught.value) == (f"inventory {second}: [hosts.web3]: host 'web3' is already"
                                 f" defined by inventory {first}: [hosts.\"web[1-3]\"]")


def test_a_missing_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InventoryError, match="does not exist"):
        Inventory.load([tmp_path / "nope.toml"])
    monkeypatch.setenv("REXEC_INVENTORY", str(tmp_path / "gone.toml"))
    with pytest.raises(InventoryError, match=r"gone.toml does not exist"):
        Inventory.load()


def test_the_public_api_exports_the_inventory_lazily() -> None:
    import rexec

    assert rexec.Inventory is Inventory and rexec.InventoryError is InventoryError
    assert rexec.PatternError is PatternError


def test_many_hosts_share_one_token_lookup(tmp_path: Path, token: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = Inventory.load([write(tmp_path, BASIC + '\n[hosts."n[1-500]"]\n')])
    from rexec.client import options

    calls = []
    real = options.ConnectOptions.resolve
    monkeypatch.setattr(options.ConnectOptions, "resolve",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    targets = inventory.resolve("n[1-500]")
    assert len(targets) == 500 and len(calls) == 1
    assert {t.options.address for t in targets} == {f"n{i}:7000" for i in range(1, 501)}


def test_a_bad_pin_is_refused_when_the_file_loads(tmp_path: Path) -> None:
    path = write(tmp_path, "[hosts.a]\ntls_pin = 'SHA256:nope'\n")
    with pytest.raises(InventoryError, match=r"\[hosts.a\] tls_pin: 'SHA256:nope' is not a"):
        Inventory.load([path])


def test_overrides_replace_every_hosts_settings_and_a_trust_flag_its_way_of_trusting(
        tmp_path: Path, token: Path) -> None:
    other = write_token(tmp_path / "other.token", "other-token-0123456789abcdef")
    text = BASIC + '\n[hosts.pinned]\ntls_tofu = true\n'
    inventory = Inventory.load([write(tmp_path, text)], overrides={
        "token_file": other, "identity": "ops", "keepalive": 0, "tls_ca": None, "config": None})
    web01, db, pinned = inventory.resolve("web01,db,pinned")
    assert {t.options.token for t in (web01, db, pinned)} == {"other-token-0123456789abcdef"}
    assert {t.options.identity for t in (web01, db, pinned)} == {"ops"}  # over db's "dba"
    assert {t.options.keepalive for t in (web01, db, pinned)} == {0}  # 0 is given, not unset
    assert pinned.options.tls_tofu  # no trust flag given: the host's own way stays
    ca = tmp_path / "ca.pem"
    trusted = Inventory.load([write(tmp_path, text)], overrides={"tls_ca": ca})
    assert trusted.target("pinned").options.tls_ca == ca
    assert not trusted.target("pinned").options.tls_tofu  # the flag's way replaced the host's
