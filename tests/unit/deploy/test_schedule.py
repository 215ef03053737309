"""Schedules: targets and limit, step selection, batches, variables, local files, describe()."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rexec.deploy.plan import Plan, PlanError
from rexec.deploy.schedule import Schedule, batch_sizes, select_steps
from rexec.fleet.inventory import Inventory
from rexec.fleet.nodeset import PatternError
from tests.helpers import ROOT, write_token

INVENTORY = """
    [defaults]
    token_file = "fleet.token"
    vars = { site = "par1", level = "defaults" }

    [hosts."web[01-02,04-20]"]
    address = "10.0.1.[1-2,4-20]"

    [hosts.web03]
    address = "10.0.2.3"
    port = 7000
    vars = { level = "host", only03 = "yes", host = "not-web03" }

    [hosts.db1]

    [groups.web]
    hosts = ["web[01-20]", "web03"]
    vars = { level = "group", tier = "front" }
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    folder = tmp_path / "inventory"
    folder.mkdir()
    write_token(folder / "fleet.token")
    path = folder / "inventory.toml"
    path.write_text(textwrap.dedent(INVENTORY))
    return Inventory.load([path])


def plan_file(folder: Path, body: str, *, targets: str = "@web", head: str = "") -> Plan:
    text = f'name = "p"\ntargets = "{targets}"\n{textwrap.dedent(head)}{textwrap.dedent(body)}'
    path = folder / "deploy.toml"
    path.write_text(text)
    return Plan.load(path)


ONE = '[[steps]]\nname = "s"\nrun = "echo ${host}"\n'


def batch_names(schedule: Schedule) -> list[list[str]]:
    return [[host.name for host in batch.hosts] for batch in schedule.batches]


# -- batches ----------------------------------------------------------------------------------


def test_a_canary_then_wider_batches_over_twenty_hosts(tmp_path: Path,
                                                       inventory: Inventory) -> None:
    assert batch_sizes([1, "10%", "50%"], 20) == [1, 2, 10, 7]
    plan = plan_file(tmp_path, ONE, head='serial = [1, "10%", "50%"]\n')
    schedule = plan.schedule(inventory)
    assert [len(batch.hosts) for batch in schedule.batches] == [1, 2, 10, 7]
    assert [batch.number for batch in schedule.batches] == [1, 2, 3, 4]
    assert [host.name for host in schedule.hosts] == [f"web{n:02}" for n in range(1, 21)]
    assert [host.batch for host in schedule.hosts][:4] == [1, 2, 2, 3]


@pytest.mark.parametrize(("serial", "total", "sizes"), [
    (["100%"], 7, [7]), ([3], 7, [3, 3, 1]), ([50], 7, [7]), (["33%"], 10, [3, 3, 3, 1]),
    (["1%"], 20, [1] * 20), (["12.5%"], 16, [2] * 8), ([2, 1], 4, [2, 1, 1]),
    ([5, "10%"], 3, [3]), ([1], 0, []),
])
def test_batch_sizes(serial: list[int | str], total: int, sizes: list[int]) -> None:
    assert batch_sizes(serial, total) == sizes


def test_batch_sizes_refuse_an_empty_batch_rather_than_loop() -> None:
    with pytest.raises(ValueError, match="at least 1 host"):
        batch_sizes([2, 0], 5)


@given(st.lists(st.one_of(st.integers(1, 30), st.integers(1, 100).map(lambda n: f"{n}%")),
                min_size=1, max_size=4),
       st.integers(0, 300))
def test_batches_cover_every_host_once(serial: list[int | str], total: int) -> None:
    sizes = batch_sizes(serial, total)
    assert sum(sizes) == total and all(size >= 1 for size in sizes)


# -- targets and limit ------------------------------------------------------------------------


def test_the_plan_s_order_is_kept_and_limit_intersects(tmp_path: Path,
                                                       inventory: Inventory) -> None:
    plan = plan_file(tmp_path, ONE, targets="web05,web01,web03,db1")
    assert batch_names(plan.schedule(inventory)) == [["web05", "web01", "web03", "db1"]]
    assert batch_names(plan.schedule(inventory, limit="web03,web05")) == [["web05", "web03"]]
    assert batch_names(plan.schedule(inventory, limit="@web!web01")) == [
        ["web05", "web03"]]


def test_a_limit_leaving_no_host_or_naming_nothing_is_an_error(tmp_path: Path,
                                                               inventory: Inventory) -> None:
    plan = plan_file(tmp_path, ONE, targets="web[01-03]")
    with pytest.raises(PlanError, match=r"limit 'db1' leaves no host of the plan's targets"
                       r" 'web\[01-03\]'"):
        plan.schedule(inventory, limit="db1")
    with pytest.raises(PatternError, match="unknown group '@nope'"):
        plan.schedule(inventory, limit="@nope")


def test_plan_targets_matching_nothing_name_the_field(tmp_path: Path,
                                                      inventory: Inventory) -> None:
    plan = plan_file(tmp_path, ONE, targets="@webs")
    with pytest.raises(PlanError, match=r"deploy\.toml: field 'targets': pattern '@webs':"
                       r" unknown group '@webs'"):
        plan.schedule(inventory)


def test_hosts_get_their_inventory_connection(tmp_path: Path, inventory: Inventory) -> None:
    plan = plan_file(tmp_path, '[[steps]]\nname = "s"\nrun = "echo ${address} ${host}"\n',
                     targets="web02,web03,other.example.net")
    web02, web03, other = plan.schedule(inventory).hosts
    assert web03.target.options.address == "10.0.2.3:7000"
    assert [host.steps[0].command for host in (web02, web03, other)] == [
        "echo 10.0.1.2:7878 web02", "echo 10.0.2.3:7000 web03",
        "echo other.example.net:7878 other.example.net"]


# -- selecting steps --------------------------------------------------------------------------

TAGGED = """
    [[steps]]
    name = "a"
    run = "a"
    tags = ["x"]
    [[steps]]
    name = "b"
    run = "b"
    tags = ["y", "x2"]
    [[steps]]
    name = "c"
    run = "c"
    tags = ["always"]
    [[steps]]
    name = "d"
    run = "d"
"""


@pytest.mark.parametrize(("options", "names"), [
    ({}, "abcd"),
    ({"tags": ["x"]}, "ac"),
    ({"tags": ["x", "y"]}, "abc"),
    ({"skip_tags": ["y"]}, "acd"),
    ({"tags": ["x"], "skip_tags": ["always"]}, "a"),
    ({"skip_tags": ["always"]}, "abd"),
    ({"tags": ["always"]}, "c"),
    ({"start_at": "b"}, "bcd"),
    ({"start_at": "b", "tags": ["x"]}, "c"),
    ({"start_at": "d"}, "d"),
])
def test_tags_skip_tags_and_start_at_select_as_ansible(tmp_path: Path, inventory: Inventory,
                                                       options: dict[str, Any],
                                                       names: str) -> None:
    plan = plan_file(tmp_path, TAGGED, targets="web01")
    assert [plan.steps[i].name for i in select_steps(plan, **options)] == list(names)
    (host,) = plan.schedule(inventory, **options).hosts
    assert "".join(step.name for step in host.steps) == names
    assert [step.index for step in host.steps] == ["abcd".index(n) for n in names]


@pytest.mark.parametrize(("options", "message"), [
    ({"start_at": "bb"}, r"start_at: no step 'bb'; did you mean 'b'\?"),
    ({"tags": ["x", "yy"]}, r"no step is tagged 'yy'; did you mean 'y'\?"),
    ({"skip_tags": ["zzz"]}, r"no step is tagged 'zzz' \(tags: always, x, x2, y\)"),
    ({"tags": ["x"], "skip_tags": ["x", "always"]}, "no step is left to run"),
])
def test_an_unknown_step_or_tag_or_an_empty_selection_is_an_error(
        tmp_path: Path, inventory: Inventory, options: dict[str, Any], message: str) -> None:
    plan = plan_file(tmp_path, TAGGED, targets="web01")
    with pytest.raises(PlanError, match=message):
        plan.schedule(inventory, **options)


def test_a_step_s_targets_narrow_the_plan_s(tmp_path: Path, inventory: Inventory) -> None:
    plan = plan_file(tmp_path, """
        [[steps]]
        name = "everywhere"
        run = "a"
        [[steps]]
        name = "canary"
        run = "b"
        targets = "web02,db1"
    """, targets="web[01-03]")
    hosts = plan.schedule(inventory).hosts
    assert [[(s.name, s.index) for s in host.steps] for host in hosts] == [
        [("everywhere", 0)], [("everywhere", 0), ("canary", 1)], [("everywhere", 0)]]
    with pytest.raises(PlanError, match=r"step 'canary' \(steps\[0\]\): field 'targets':"
                       " pattern 'web02,@db': unknown group '@db'"):
        plan_file(tmp_path, "[[steps]]\nname = 'canary'\nrun = 'b'\ntargets = 'web02,@db'\n"
                  ).schedule(inventory)


# -- variables --------------------------------------------------------------------------------

LEVEL = '[[steps]]\nname = "show"\nrun = "${level} ${site} ${host} ${batch}"\n'


def test_variables_merge_plan_then_inventory_then_extra_vars_built_ins_last(
        tmp_path: Path, inventory: Inventory) -> None:
    plan = plan_file(tmp_path, LEVEL, targets="db1,web01,web03",
                     head='serial = 1\n[vars]\nlevel = "plan"\nsite = "plan-site"\nonly = 1\n')
    db1, web01, web03 = plan.schedule(inventory).hosts
    # the inventory's defaults, group and host variables are all over the plan's
    assert [host.steps[0].command for host in (db1, web01, web03)] == [
        "defaults par1 db1 1", "group par1 web01 2", "host par1 web03 3"]
    assert web03.variables["host"] == "web03"  # the built-in wins over the inventory's 'host'
    assert web03.variables["only"] == 1 and web03.variables["only03"] == "yes"
    (web01,) = plan.schedule(inventory, limit="web01",
                             extra_vars={"level": "cli", "site": "x"}).hosts
    assert web01.steps[0].command == "cli x web01 1"


def test_extra_vars_cannot_set_a_built_in_or_a_bad_name(tmp_path: Path,
                                                        inventory: Inventory) -> None:
    plan = plan_file(tmp_path, LEVEL)
    with pytest.raises(PlanError, match=r"--var batch: 'batch' is a built-in variable"):
        plan.schedule(inventory, extra_vars={"batch": "9"})
    with pytest.raises(PlanError, match="--var my-var: 'my-var' is not a variable name"):
        plan.schedule(inventory, extra_vars={"my-var": "9"})


def test_a_missing_variable_names_the_step_the_field_and_the_variable(
        tmp_path: Path, inventory: Inventory) -> None:
    plan = plan_file(tmp_path, '[[steps]]\nname = "s"\nrun = "true"\n'
                     '[[steps]]\nname = "install"\nrun = "x"\nunless = "test ${version}"\n')
    with pytest.raises(PlanError, match=r"deploy\.toml: step 'install' \(steps\[1\]\): field"
                       r" 'unless': undefined variable 'version': give it in \[vars\], the"
                       r" inventory, or --var version=VALUE$"):
        plan.schedule(inventory)
    assert plan.schedule(inventory, extra_vars={"version": "2"}).hosts[0].steps[1].unless == (
        "test 2")


def test_a_variable_only_some_hosts_have_names_the_host(tmp_path: Path,
                                                        inventory: Inventory) -> None:
    plan = plan_file(tmp_path, '[[steps]]\nname = "s"\nrun = "echo ${only03}"\n',
                     targets="web03,web04")
    with pytest.raises(PlanError, match=r"step 's' \(steps\[0\]\): field 'run': undefined"
                       r" variable 'only03' on host web04 \(the inventory gives it to 1 other"
                       r" host\)"):
        plan.schedule(inventory)
    (web03,) = plan.schedule(inventory, limit="web03").hosts
    assert web03.steps[0].command == "echo yes"


def test_a_step_not_selected_is_not_rendered(tmp_path: Path, inventory: Inventory) -> None:
    plan = plan_file(tmp_path, '[[steps]]\nname = "s"\nrun = "true"\n'
                     '[[steps]]\nname = "later"\nrun = "${missing}"\ntags = ["t"]\n')
    assert len(plan.schedule(inventory, skip_tags=["t"]).hosts[0].steps) == 1


# -- files, handlers and health ---------------------------------------------------------------

FILES = """
    [[steps]]
    name = "conf"
    notify = ["restart"]
    [steps.put]
    src = "files/${tier}.conf"
    dest = "/etc/${tier}.conf"
    mode = "0600"
    owner = "${tier}"
    [[steps]]
    name = "motd"
    template = { src = "motd.tmpl", dest = "/etc/motd" }
    [[steps]]
    name = "logs"
    get = { src = "/var/log/${tier}.log", dest = "logs" }
    [[handlers]]
    name = "restart"
    run = "systemctl restart ${tier}"
    [[handlers]]
    name = "unused"
    run = "${not_rendered}"
    [health]
    run = "curl ${address}"
    retries = 2
"""


def test_local_files_are_relative_to_the_plan_and_rendered_per_host(
        tmp_path: Path, inventory: Inventory) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "front.conf").write_text("x")
    (tmp_path / "motd.tmpl").write_text("${host} ${tier:q} $${literal} é\n")
    web01, web03 = plan_file(tmp_path, FILES, targets="web01,web03").schedule(inventory).hosts
    conf, motd, logs = web01.steps
    assert (conf.kind, conf.src, conf.dest, conf.mode, conf.owner, conf.notify) == (
        "put", str(tmp_path / "files" / "front.conf"), "/etc/front.conf", 0o600, "front",
        ("restart",))
    assert (motd.kind, motd.src, motd.dest, motd.mode) == (
        "template", str(tmp_path / "motd.tmpl"), "/etc/motd", None)
    assert motd.content == "web01 front ${literal} é\n".encode()
    assert web03.steps[1].content == "web03 front ${literal} é\n".encode()
    assert (logs.kind, logs.src, logs.dest) == ("get", "/var/log/front.log",
                                                str(tmp_path / "logs"))
    # handlers: only those a step of this host notifies, rendered for it
    assert [(h.name, h.command) for h in web01.handlers] == [
        ("restart", "systemctl restart front")]
    assert web01.health is not None and web01.health.command == "curl 10.0.1.1:7878"
    assert web01.health.health.retries == 2


def test_a_missing_template_or_put_source_names_the_step_and_the_path(
        tmp_path: Path, inventory: Inventory) -> None:
    plan = plan_file(tmp_path, FILES, targets="web01")
    with pytest.raises(PlanError, match=r"step 'conf' \(steps\[0\]\): field 'put\.src' \(host"
                       r" web01\): .*files/front\.conf: no such file"):
        plan.schedule(inventory)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "front.conf").mkdir()
    with pytest.raises(PlanError, match=r"front\.conf: not a regular file"):
        plan.schedule(inventory)
    (tmp_path / "files" / "front.conf").rmdir()
    (tmp_path / "files" / "front.conf").write_text("x")
    with pytest.raises(PlanError, match=r"step 'motd' \(steps\[1\]\): field 'template\.src':"
                       rf" template {tmp_path}/motd\.tmpl: no such file"):
        plan.schedule(inventory)
    (tmp_path / "motd.tmpl").write_bytes(b"caf\xe9\n")
    with pytest.raises(PlanError, match=r"field 'template\.src': template .*motd\.tmpl: not"
                       r" UTF-8 text \(byte 3\)"):
        plan.schedule(inventory)
    (tmp_path / "motd.tmpl").write_text("ok\n${host\n")
    with pytest.raises(PlanError, match=r"template .*motd\.tmpl: '\$\{host' at line 2, column"
                       " 1 is not"):
        plan.schedule(inventory)
    (tmp_path / "motd.tmpl").write_text("${release}\n")
    with pytest.raises(PlanError, match=r"template .*motd\.tmpl: undefined variable 'release'"):
        plan.schedule(inventory)


def test_a_remote_path_must_be_absolute(tmp_path: Path, inventory: Inventory) -> None:
    plan = plan_file(tmp_path, '[[steps]]\nname = "g"\nget = { src = "${tier}.log", dest = "l" }\n')
    with pytest.raises(PlanError, match=r"step 'g' \(steps\[0\]\): field 'get\.src':"
                       r" 'front\.log' is not an absolute path"):
        plan.schedule(inventory)


# -- describe ---------------------------------------------------------------------------------


def test_describe_says_what_runs_where_batch_by_batch(tmp_path: Path,
                                                      inventory: Inventory) -> None:
    (tmp_path / "motd.tmpl").write_text("${host}\n")
    plan = plan_file(tmp_path, """
        [[steps]]
        name = "install"
        run = "apt-get install -y nginx"
        unless = "dpkg -s nginx"
        retries = 2
        notify = ["restart nginx"]
        [[steps]]
        name = "motd"
        template = { src = "motd.tmpl", dest = "/etc/motd", mode = "0644" }
        targets = "web01"
        [[handlers]]
        name = "restart nginx"
        run = "systemctl restart nginx"
        [health]
        run = "curl -f localhost"
    """, targets="web[01-03]", head="serial = [1, 2]\n")
    assert plan.schedule(inventory).describe() == [
        f"plan 'p' ({plan.path}, sha256 {plan.sha256[:12]}): 3 hosts in 2 batches",
        "batch 1 (1 host): web01",
        "  web01  install        run: apt-get install -y nginx  (unless: dpkg -s nginx;"
        " retries 2, every 1 s; notify restart nginx)",
        f"  web01  motd           template: {tmp_path}/motd.tmpl -> /etc/motd  (mode 0644;"
        " 6 bytes)",
        "  web01  restart nginx  handler, if notified: systemctl restart nginx",
        "  web01  [health]       run: curl -f localhost",
        "batch 2 (2 hosts): web[02-03]",
        "  web02  install        run: apt-get install -y nginx  (unless: dpkg -s nginx;"
        " retries 2, every 1 s; notify restart nginx)",
        "  web02  restart nginx  handler, if notified: systemctl restart nginx",
        "  web02  [health]       run: curl -f localhost",
        "  web03  install        run: apt-get install -y nginx  (unless: dpkg -s nginx;"
        " retries 2, every 1 s; notify restart nginx)",
        "  web03  restart nginx  handler, if notified: systemctl restart nginx",
        "  web03  [health]       run: curl -f localhost",
    ]


# -- the example plan -------------------------------------------------------------------------


def test_the_example_plan_schedules_on_the_example_inventory(tmp_path: Path) -> None:
    token = write_token(tmp_path / "fleet.token")
    inventory = Inventory.load([ROOT / "config" / "inventory.toml"],
                               overrides={"token_file": token})
    plan = Plan.load(ROOT / "config" / "deploy-example.toml")
    assert {step.kind for step in plan.steps} == {"run", "put", "template"}
    assert plan.handlers and plan.health is not None
    schedule = plan.schedule(inventory)
    assert batch_names(schedule) == [["web01"], ["web02", "web03"], ["web04"]]
    web01 = schedule.hosts[0]
    install, _, _, motd, check = web01.steps
    assert install.unless is not None and "-f='${Status} ${Version}'" in install.unless
    assert motd.content is not None and motd.content.startswith(
        b"web01 (web, front) at par1\napp release 2024.06.1, deployed by rexec in batch 1\n")
    assert check.only_if == "test -d /srv/app"
    assert [step.name for step in schedule.hosts[1].steps] == [  # "check config": canary only
        "install nginx", "site config", "enable site", "motd"]
    assert [handler.name for handler in web01.handlers] == ["reload nginx"]
    assert len(schedule.describe()) == 1 + 3 + 4 * 7 - 3
    only_config = plan.schedule(inventory, tags=["config"], limit="web02")
    assert [step.name for step in only_config.hosts[0].steps] == [
        "site config", "enable site", "motd"]  # motd is tagged always
