"""Plan files: loading, normalising, every error naming the file, the step and the field, and
the ``${name}`` variables."""

from __future__ import annotations

import hashlib
import re
import shlex
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rexec.deploy.plan import (
    GetAction,
    Plan,
    PlanError,
    PutAction,
    TemplateAction,
    TemplateSyntaxError,
    UndefinedVariable,
    render,
    variables_in,
)
from rexec.errors import ConfigError

HEAD = 'name = "p"\ntargets = "web[1-3]"\n'
STEP = '[[steps]]\nname = "s"\nrun = "true"\n'


def write(folder: Path, text: str, name: str = "deploy.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


FULL = """
    name = "rollout"
    targets = "@web,!web03"
    serial = 2
    max_fail_percentage = 10
    forks = 8
    [vars]
    version = "1.2"
    count = 3
    ratio = 0.5
    debug = false

    [[steps]]
    name = "install"
    run = "apt-get install -y app=${version:q}"
    unless = "dpkg -s app"
    timeout = 30
    retries = 2
    retry_delay = 0.5
    until = "systemctl is-active app"
    notify = ["restart"]
    tags = ["packages"]

    [[steps]]
    name = "config"
    put = { src = "files/app.conf", dest = "/etc/app.conf", mode = "0640", owner = "app:app" }
    creates = "/etc/app.conf"
    only_if = "test -d /etc"
    targets = "web01"

    [[steps]]
    name = "logs"
    get = { src = "/var/log/app.log", dest = "logs" }

    [[steps]]
    name = "motd"
    template = { src = "motd.tmpl", dest = "/etc/motd", mode = 0o644 }

    [[steps]]
    name = "probe"
    run = "curl -fsS localhost"
    changed_when = [0, 2]

    [[handlers]]
    name = "restart"
    run = "systemctl restart app"

    [health]
    run = "curl -fsS localhost/healthz"
    retries = 3
"""


def test_a_full_plan_loads_and_is_normalised(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    plan = Plan.load(path)
    assert plan.path == path and plan.folder == tmp_path
    assert plan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (plan.name, plan.targets, plan.serial) == ("rollout", "@web,!web03", [2])
    assert (plan.max_fail_percentage, plan.forks) == (10.0, 8)
    assert plan.vars == {"version": "1.2", "count": 3, "ratio": 0.5, "debug": False}
    assert [step.kind for step in plan.steps] == ["run", "put", "get", "template", "run"]
    install, config, logs, motd, probe = plan.steps
    assert install.action == "apt-get install -y app=${version:q}"
    assert (install.timeout, install.retries, install.retry_delay) == (30.0, 2, 0.5)
    assert (install.unless, install.until, install.notify, install.tags) == (
        "dpkg -s app", "systemctl is-active app", ["restart"], ["packages"])
    assert install.changed_when == "always"  # a run step's default
    assert config.action == PutAction(src="files/app.conf", dest="/etc/app.conf", mode=0o640,
                                      owner="app:app")
    assert (config.creates, config.only_if, config.targets) == ("/etc/app.conf", "test -d /etc",
                                                                "web01")
    assert config.changed_when is None and config.retries == 0 and config.retry_delay == 1.0
    assert logs.action == GetAction(src="/var/log/app.log", dest="logs")
    assert motd.action == TemplateAction(src="motd.tmpl", dest="/etc/motd", mode=0o644)
    assert probe.changed_when == [0, 2]
    assert [(h.name, h.run) for h in plan.handlers] == [("restart", "systemctl restart app")]
    assert plan.health is not None
    assert (plan.health.run, plan.health.retries, plan.health.delay) == (
        "curl -fsS localhost/healthz", 3, 1.0)


def test_defaults_serial_one_batch_no_handlers_no_health(tmp_path: Path) -> None:
    plan = Plan.load(write(tmp_path, HEAD + STEP))
    assert plan.serial == ["100%"]
    assert (plan.max_fail_percentage, plan.forks, plan.vars) == (None, None, {})
    assert (plan.handlers, plan.health) == ([], None)


@pytest.mark.parametrize(("serial", "normalised"), [
    ("1", [1]), ('"10%"', ["10%"]), ('[1, "10%", "50%"]', [1, "10%", "50%"]),
    ('"12.5%"', ["12.5%"]), ('"100%"', ["100%"]), ("50", [50]),
])
def test_serial_is_a_count_a_percentage_or_a_list_of_them(tmp_path: Path, serial: str,
                                                           normalised: list[object]) -> None:
    plan = Plan.load(write(tmp_path, HEAD + f"serial = {serial}\n" + STEP))
    assert plan.serial == normalised


@pytest.mark.parametrize(("mode", "bits"), [('"0644"', 0o644), ('"755"', 0o755),
                                            ('"4755"', 0o4755), ('"0o600"', 0o600),
                                            ("0o640", 0o640), ("420", 0o644)])
def test_a_mode_is_an_octal_string_or_permission_bits(tmp_path: Path, mode: str,
                                                      bits: int) -> None:
    plan = Plan.load(write(tmp_path, HEAD + f"""
[[steps]]
name = "s"
put = {{ src = "a", dest = "/a", mode = {mode} }}
"""))
    action = plan.steps[0].action
    assert isinstance(action, PutAction) and action.mode == bits


FILE = r"deploy\.toml: "
S0 = FILE + r"step 's' \(steps\[0\]\): "


@pytest.mark.parametrize(("text", "message"), [
    # unknown keys, with the closest known one
    ('nmae = "p"\ntargets = "a"\n' + STEP,
     FILE + r"unknown field 'nmae'; did you mean 'name'\?"),
    (HEAD + '[[step]]\nname = "s"\nrun = "true"\n',
     FILE + r"unknown field 'step'; did you mean 'steps'\?"),
    (HEAD + STEP + "retires = 1\n", S0 + r"unknown field 'retires'; did you mean 'retries'\?"),
    (HEAD + '[[steps]]\nname = "s"\nput = { src = "a", dest = "/b", moed = "0644" }\n',
     S0 + r"unknown field 'put\.moed'; did you mean 'mode'\?"),
    (HEAD + STEP + "colour = 1\n", S0 + r"unknown field 'colour' \(expected: name, run, put,"),
    (HEAD + STEP + '[[handlers]]\nname = "h"\nrun = "x"\nput = { src = "a", dest = "/b" }\n',
     FILE + r"handler 'h' \(handlers\[0\]\): unknown field 'put' \(expected: name, run\)"),
    (HEAD + STEP + '[health]\nrun = "x"\nretry = 3\n',
     FILE + r"\[health\]: unknown field 'retry'; did you mean 'retries'\?"),
    # the action: exactly one
    (HEAD + '[[steps]]\nname = "s"\nrun = "a"\nput = { src = "a", dest = "/b" }\n',
     S0 + "a step has exactly one action of run, put, get or template, not run and put$"),
    (HEAD + '[[steps]]\nname = "s"\ncreates = "/x"\n',
     S0 + "a step needs an action: one of run, put, get or template$"),
    (HEAD + '[[steps]]\nname = "s"\nrun = ""\n',
     S0 + "field 'run': String should have at least 1 character"),
    # names and handlers
    (HEAD + STEP + STEP, FILE + r"step 's' \(steps\[1\]\): field 'name': steps\[0\] is named"
     " 's' too"),
    (HEAD + '[[steps]]\nrun = "true"\n', FILE + r"steps\[0\]: field 'name': Field required"),
    (HEAD + STEP + 'notify = ["restrat"]\n[[handlers]]\nname = "restart"\nrun = "x"\n',
     S0 + r"field 'notify': no handler 'restrat'; did you mean 'restart'\?"),
    (HEAD + STEP + 'notify = ["restart"]\n',
     S0 + r"field 'notify': no handler 'restart' \(the plan has no \[\[handlers\]\]\)"),
    (HEAD + STEP + '[[handlers]]\nname = "h"\nrun = "x"\n[[handlers]]\nname = "h"\nrun = "y"\n',
     FILE + r"handler 'h' \(handlers\[1\]\): field 'name': handlers\[0\] is named 'h' too"),
    (HEAD + STEP + '[[handlers]]\nname = "s"\nrun = "x"\n',
     FILE + r"handler 's' \(handlers\[0\]\): field 'name': steps\[0\] is named 's' too"),
    (HEAD + STEP + '[[handlers]]\nname = "h"\n',
     FILE + r"handler 'h' \(handlers\[0\]\): field 'run': Field required"),
    # fields
    (HEAD + STEP + "retries = -1\n",
     S0 + "field 'retries': Input should be greater than or equal to 0$"),
    (HEAD + STEP + "retries = 1.5\n", S0 + "field 'retries': Input should be a valid integer"),
    (HEAD + STEP + "timeout = 0\n", S0 + "field 'timeout': Input should be greater than 0"),
    (HEAD + STEP + 'timeout = "30"\n', S0 + "field 'timeout': Input should be a valid number"),
    (HEAD + STEP + "retry_delay = -1\n", S0 + "field 'retry_delay': Input should be greater"),
    (HEAD + STEP + "tags = 'web'\n", S0 + "field 'tags': Input should be a valid list"),
    (HEAD + STEP + "targets = 'web[1-'\n", S0 + r"field 'targets': pattern 'web\[1-': '\['"
     " without '\\]'"),
    ('name = "p"\ntargets = "a,,b"\n' + STEP, FILE + "field 'targets': pattern 'a,,b': an"
     " empty item"),
    ('name = "p"\n' + STEP, FILE + "field 'targets': Field required"),
    (HEAD, FILE + "field 'steps': Field required"),
    (HEAD + "steps = []\n", FILE + "field 'steps': List should have at least 1 item"),
    (HEAD + '[steps]\nname = "s"\nrun = "x"\n',
     FILE + r"field 'steps': Input should be a valid list \(each one a \[\[steps\]\] table\)"),
    (HEAD + "max_fail_percentage = 101\n" + STEP,
     FILE + "field 'max_fail_percentage': Input should be less than or equal to 100"),
    (HEAD + "forks = 0\n" + STEP, FILE + "field 'forks': Input should be greater than or"),
    (HEAD + STEP + '[health]\nrun = "x"\nretries = -1\n',
     FILE + r"\[health\]: field 'retries': Input should be greater than or equal to 0"),
    # serial
    (HEAD + "serial = 0\n" + STEP, FILE + "field 'serial': 0 hosts per batch"),
    (HEAD + 'serial = "0%"\n' + STEP,
     FILE + "field 'serial': '0%' is not a percentage above 0% and up to 100%"),
    (HEAD + 'serial = "150%"\n' + STEP, FILE + "field 'serial': '150%' is not a percentage"),
    (HEAD + 'serial = "ten"\n' + STEP, FILE + "field 'serial': 'ten' is not a percentage"),
    (HEAD + "serial = []\n" + STEP, FILE + "field 'serial': an empty list"),
    (HEAD + "serial = true\n" + STEP, FILE + "field 'serial': expected a number of hosts"),
    (HEAD + 'serial = [1, "0%"]\n' + STEP, FILE + "field 'serial': '0%' is not a percentage"),
    # changed_when
    (HEAD + '[[steps]]\nname = "s"\nput = { src = "a", dest = "/b" }\nchanged_when = "never"\n',
     S0 + r"field 'changed_when': only a run step has changed_when \(a put step changed"),
    (HEAD + STEP + 'changed_when = "sometimes"\n',
     S0 + "field 'changed_when': expected \"always\", \"never\" or a list of exit codes"),
    (HEAD + STEP + "changed_when = [0, 256]\n", S0 + "field 'changed_when': expected"),
    (HEAD + STEP + "changed_when = []\n", S0 + "field 'changed_when': expected"),
    # modes
    (HEAD + '[[steps]]\nname = "s"\nput = { src = "a", dest = "/b", mode = "0999" }\n',
     S0 + "field 'put.mode': expected octal permission bits such as \"0644\", not '0999'"),
    (HEAD + '[[steps]]\nname = "s"\nput = { src = "a", dest = "/b", mode = 644 }\n',
     S0 + r"field 'put.mode': the integer 644 is not permission bits \(at most 0o777\): TOML"
     r" reads 644 as decimal"),
    (HEAD + '[[steps]]\nname = "s"\ntemplate = { src = "a", dest = "/b", mode = "rw-r--r--" }\n',
     S0 + "field 'template.mode': expected octal permission bits"),
    (HEAD + '[[steps]]\nname = "s"\nget = { src = "/a" }\n',
     S0 + "field 'get.dest': Field required"),
    (HEAD + '[[steps]]\nname = "s"\nput = "file"\n', S0 + "field 'put': Input should be"),
    # ${ } syntax, checked at load
    (HEAD + '[[steps]]\nname = "s"\nrun = "echo ${ver"\n',
     S0 + r"field 'run': '\$\{ver' at column 6 is not \$\{name\} or \$\{name:q\} \(a literal"
     r" \$\{ is written \$\$\{\)"),
    (HEAD + '[[steps]]\nname = "s"\nrun = "echo ${a.b}"\n', S0 + r"field 'run': '\$\{a\.b\}'"),
    (HEAD + '[[steps]]\nname = "s"\nrun = "echo ${x:u}"\n', S0 + r"field 'run': '\$\{x:u\}'"),
    (HEAD + '[[steps]]\nname = "s"\nrun = "x"\nunless = "${1x}"\n',
     S0 + r"field 'unless': '\$\{1x\}' at column 1"),
    (HEAD + '[[steps]]\nname = "s"\nput = { src = "${", dest = "/b" }\n',
     S0 + r"field 'put.src': '\$\{' at column 1"),
    (HEAD + STEP + '[[handlers]]\nname = "h"\nrun = "${ }"\n',
     FILE + r"handler 'h' \(handlers\[0\]\): field 'run': '\$\{' at column 1"),
    (HEAD + STEP + '[health]\nrun = "curl ${url"\n', FILE + r"\[health\]: field 'run': '\$\{url'"),
    # [vars]
    (HEAD + '[vars]\n"my-var" = 1\n' + STEP,
     FILE + "field 'vars': 'my-var' is not a variable name"),
    (HEAD + '[vars]\nhost = "x"\n' + STEP,
     FILE + r"field 'vars': 'host' is a built-in variable \(the target's name\): it cannot be"),
    (HEAD + "[vars]\nlist = [1]\n" + STEP,
     FILE + "field 'vars.list': expected a string, a number or a boolean, not a list"),
])
def test_each_error_names_the_file_the_step_and_the_field(tmp_path: Path, text: str,
                                                          message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PlanError) as caught:
        Plan.load(path)
    shown = str(caught.value).replace(str(tmp_path) + "/", "")
    assert re.search(message, shown), shown
    assert isinstance(caught.value, ConfigError)


def test_a_toml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "p"\ntargets = "a"\nserial = [1,\n[[steps]]\n')
    with pytest.raises(PlanError, match=rf"^{re.escape(str(path))}: not valid TOML: .*line 4"):
        Plan.load(path)


def test_a_missing_unreadable_or_binary_file_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"nope\.toml: no such plan file"):
        Plan.load(tmp_path / "nope.toml")
    with pytest.raises(PlanError, match="cannot read the plan: Is a directory"):
        Plan.load(tmp_path)
    (tmp_path / "bin.toml").write_bytes(b'name = "\xff"\n')
    with pytest.raises(PlanError, match=r"bin\.toml: not UTF-8 text \(byte 8\)"):
        Plan.load(tmp_path / "bin.toml")


def test_several_errors_are_all_named(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + STEP + "retries = -1\ntimeout = 0\n")
    with pytest.raises(PlanError) as caught:
        Plan.load(path)
    assert "field 'retries'" in str(caught.value) and "field 'timeout'" in str(caught.value)


# -- render -----------------------------------------------------------------------------------

VARIABLES = {"name": "web 01", "port": 8080, "ratio": 0.25, "on": True, "off": False,
             "empty": ""}


@pytest.mark.parametrize(("text", "rendered"), [
    ("${name}", "web 01"),
    ("${name:q}", "'web 01'"),
    ("port=${port} ratio=${ratio}", "port=8080 ratio=0.25"),
    ("${on} ${off} ${on:q}", "true false true"),
    ("[${empty}] [${empty:q}]", "[] ['']"),
    ("$${name}", "${name}"),
    ("$$${name}", "$${name}"),  # "$" then the escape: always read left to right
    ("$$ $HOME $(date) ${name}$", "$$ $HOME $(date) web 01$"),
    ("${name}${port}", "web 018080"),
    ("a{b} $ {c}", "a{b} $ {c}"),
])
def test_render_substitutes_quotes_and_escapes(text: str, rendered: str) -> None:
    assert render(text, VARIABLES, "here") == rendered


def test_render_never_evaluates_or_recurses() -> None:
    assert render("${a}", {"a": "${b}", "b": "no"}, "w") == "${b}"
    assert render("${a:q}", {"a": "$(rm -rf /); `x`"}, "w") == "'$(rm -rf /); `x`'"


@pytest.mark.parametrize(("text", "message"), [
    ("${", r"^here: '\$\{' at column 1 is not \$\{name\} or \$\{name:q\}"),
    ("echo ${name:Q}", r"^here: '\$\{name:Q\}' at column 6"),
    ("${na me}", r"^here: '\$\{na' at column 1"),
    ("${name|upper}", r"^here: '\$\{name\|upper\}' at column 1"),
    ("line one\n  ${x.y}", r"^here: '\$\{x\.y\}' at line 2, column 3"),
])
def test_a_malformed_reference_is_an_error_naming_where(text: str, message: str) -> None:
    with pytest.raises(TemplateSyntaxError, match=message):
        render(text, VARIABLES, "here")
    with pytest.raises(TemplateSyntaxError, match=message.replace("here: ", "")):
        variables_in(text)


def test_an_undefined_variable_names_it_and_where() -> None:
    with pytest.raises(UndefinedVariable, match=r"^step 's': field 'run': undefined variable"
                       r" 'version'$") as caught:
        render("install ${version}", VARIABLES, "step 's': field 'run'")
    assert caught.value.variable == "version" and isinstance(caught.value, PlanError)


def test_only_scalars_are_inserted() -> None:
    with pytest.raises(PlanError, match="variable 'ports' is a list: only strings, numbers and"):
        render("${ports}", {"ports": [1, 2]}, "w")


def test_variables_in_lists_the_names_not_the_escapes() -> None:
    assert variables_in("${a} ${b:q} $${c} $d ${a}") == {"a", "b"}
    assert variables_in("no variables: $HOME") == set()


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_text_without_a_reference_renders_as_itself(text: str) -> None:
    text = text.replace("${", "")
    if "${" not in text:  # removing one may have made another
        assert render(text, {}, "w") == text
        assert variables_in(text) == set()


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_escaping_every_reference_round_trips(text: str) -> None:
    assert render(text.replace("${", "$${"), {}, "w") == text


@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]*", fullmatch=True))
def test_an_escaped_reference_renders_as_the_reference(name: str) -> None:
    assert render(f"$${{{name}}}", {name: "value"}, "w") == f"${{{name}}}"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_a_quoted_value_is_one_shell_word_exactly(value: str) -> None:
    assert shlex.split(render("${v:q}", {"v": value}, "w")) == [value]
    assert shlex.split(render("echo ${v:q} end", {"v": value}, "w")) == ["echo", value, "end"]
