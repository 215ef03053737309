"""Deploy plans: the TOML file, its models, and the ``${name}`` variables.

A plan file (every table and key checked; an unknown one is an error)::

    name = "web rollout"                 required
    targets = "@web"                     a pattern, as every TARGET
    serial = [1, "10%", "50%"]           hosts per batch: N, "P%", or a list whose last item
                                         repeats (default: every host in one batch)
    max_fail_percentage = 10.0           forks = 20                       both optional
    [vars]                               strings, integers, floats, booleans
    [[steps]]                            name, one action (run = "CMD", put = {src, dest,
                                         mode?, owner?}, get = {src, dest}, template = {src,
                                         dest, mode?}), guards (creates, unless, only_if),
                                         timeout, retries, retry_delay, until, changed_when,
                                         notify, tags, targets
    [[handlers]]                         name, run
    [health]                             run, retries, delay

Variables are substituted, never evaluated: ``${name}`` inserts a value as written (booleans
as ``true``/``false``), ``${name:q}`` inserts it shell-quoted (``shlex.quote``), and ``$${``
is a literal ``${``. A ``$`` not starting ``${`` (``$HOME``, ``$(date)``, ``$$``) is left to
the shell; a ``${`` that is not ``${name}`` or ``${name:q}`` is an error. Sources, lowest
first: ``[vars]``, the host's inventory variables, ``--var NAME=VALUE``, and the built-ins
``host``, ``address`` and ``batch``, which nothing overrides.

Reading the file is this module's only I/O; ``Plan.schedule`` (``schedule.py``) reads the
templates. Every error is a PlanError naming the file, the step and the field.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from rexec.config import did_you_mean
from rexec.errors import ConfigError
from rexec.fleet.nodeset import PatternError, split_items

if TYPE_CHECKING:
    from rexec.deploy.executor import DeployReport, StepResult
    from rexec.deploy.schedule import Schedule
    from rexec.fleet.inventory import Inventory

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""A variable's name."""
BUILTINS = {"host": "the target's name", "address": "the target's HOST:PORT",
            "batch": "the host's batch number, from 1"}
"""The variables rexec sets for each host; nothing overrides them."""
StepKind: TypeAlias = Literal["run", "put", "get", "template"]
ACTIONS: tuple[StepKind, ...] = ("run", "put", "get", "template")

# "$${" (an escaped "${"), a well-formed "${name}" or "${name:q}", or a bare "${" (malformed)
_TOKEN = re.compile(r"\$\$\{|\$\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<quote>:q)?\})?")


class PlanError(ConfigError):
    """A plan that cannot be read, does not validate, or cannot be scheduled (the message names
    the file, the step and the field)."""


class TemplateSyntaxError(PlanError, ValueError):
    """A ``${`` that is neither ``${name}`` nor ``${name:q}`` (a ValueError too, so that the
    plan's validators report it as the field's error)."""


class UndefinedVariable(PlanError):
    """A ``${name}`` that no variable source gives; ``variable`` is the name, ``where`` the
    place given to ``render``."""

    def __init__(self, where: str, variable: str) -> None:
        super().__init__(f"{_prefix(where)}undefined variable {variable!r}")
        self.where = where
        self.variable = variable


# -- variables --------------------------------------------------------------------------------


def render(text: str, variables: Mapping[str, object], where: str) -> str:
    """``text`` with each ``${name}`` replaced by its value (``${name:q}`` shell-quoted) and each
    ``$${`` by ``${``; TemplateSyntaxError or UndefinedVariable naming ``where``."""

    def substitute(match: re.Match[str]) -> str:
        name = _token_name(match, text, where)
        if name is None:
            return "${"
        if name not in variables:
            raise UndefinedVariable(where, name)
        value = _as_text(variables[name], name, where)
        return shlex.quote(value) if match["quote"] else value

    return _TOKEN.sub(substitute, text)


def variables_in(text: str, where: str = "") -> set[str]:
    """The variable names ``text`` refers to (TemplateSyntaxError for a malformed ``${``)."""
    found = {_token_name(match, text, where) for match in _TOKEN.finditer(text)}
    return {name for name in found if name is not None}


def _token_name(match: re.Match[str], text: str, where: str) -> str | None:
    """A well-formed token's variable name, None for the ``$${`` escape."""
    if match.group() == "$${":
        return None
    if match["name"] is None:
        raise TemplateSyntaxError(f"{_prefix(where)}{_malformed(text, match.start())}")
    return match["name"]


def _malformed(text: str, start: int) -> str:
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    at = f"line {line}, column {column}" if "\n" in text else f"column {column}"
    piece = re.match(r"[^\s}]*}?", text[start:start + 40])
    shown = piece.group() if piece else text[start:start + 2]
    return (f"{shown!r} at {at} is not ${{name}} or ${{name:q}} (a literal ${{ is written"
            " $${)")


def _as_text(value: object, name: str, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise PlanError(f"{_prefix(where)}variable {name!r} is a {type(value).__name__}: only"
                    " strings, numbers and booleans can be inserted")


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


# -- field types ------------------------------------------------------------------------------


def _checked_syntax(value: str) -> str:
    variables_in(value)
    return value


def _pattern(value: str) -> str:
    try:
        split_items(value)
    except PatternError as exc:
        raise ValueError(str(exc)) from None
    return value


def _mode(value: object) -> int:
    """An octal string ("0644", "4755", "0o640") or an integer of permission bits (0o644)."""
    if isinstance(value, str) and re.fullmatch(r"(0o)?[0-7]{1,4}", value):
        return int(value.removeprefix("0o"), 8)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 0o777:
            return value
        raise ValueError(f"the integer {value} is not permission bits (at most 0o777): TOML reads"
                         " 644 as decimal, so write the string \"0644\" or 0o644 (special bits"
                         " as a string: \"4755\")")
    raise ValueError(f"expected octal permission bits such as \"0644\", not {value!r}")


def _changed_when(value: object) -> str | list[int]:
    if value in ("always", "never"):
        assert isinstance(value, str)
        return value
    if (isinstance(value, list) and value
            and all(type(code) is int and 0 <= code <= 255 for code in value)):
        return list(value)
    raise ValueError(f"expected \"always\", \"never\" or a list of exit codes (0-255), not"
                     f" {value!r}")


def _serial(value: object) -> list[int | str]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("an empty list: give hosts per batch, such as 1, \"10%\" or"
                         " [1, \"10%\", \"50%\"]")
    return [_serial_item(item) for item in items]


def _serial_item(item: object) -> int | str:
    if type(item) is int:
        if item < 1:
            raise ValueError(f"{item} hosts per batch: a batch has at least 1 host")
        return item
    if isinstance(item, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)%\s*", item)
        if match is None or not 0 < float(match[1]) <= 100:
            raise ValueError(f"{item!r} is not a percentage above 0% and up to 100%")
        return f"{match[1]}%"
    raise ValueError(f"expected a number of hosts (1 or more), a percentage (\"10%\") or a list"
                     f" of them, not {item!r}")


def _one_batch() -> list[int | str]:
    return ["100%"]  # every host in one batch


def _scalar(value: object) -> str | int | float | bool:
    if isinstance(value, str | int | float):  # bool is an int
        return value
    raise ValueError(f"expected a string, a number or a boolean, not a {type(value).__name__}")


Name = Annotated[str, Field(min_length=1)]
Text = Annotated[str, Field(min_length=1), AfterValidator(_checked_syntax)]
"""A string whose ``${name}`` are rendered per host."""
Pattern = Annotated[str, AfterValidator(_pattern)]
Mode = Annotated[int, PlainValidator(_mode)]
ChangedWhen = Annotated[Literal["always", "never"] | list[int], PlainValidator(_changed_when)]
Serial = Annotated[list[int | str], PlainValidator(_serial)]
VarValue = Annotated[str | int | float | bool, PlainValidator(_scalar)]

_MODEL = ConfigDict(extra="forbid", frozen=True, strict=True)


# -- the models -------------------------------------------------------------------------------


class PutAction(BaseModel):
    """``put = {src, dest, mode?, owner?}``: a local file (relative to the plan's folder) to the
    remote path ``dest``, with ``mode`` (permission bits) and ``owner`` ("user[:group]")."""

    model_config = _MODEL

    src: Text
    dest: Text
    mode: Mode | None = None
    owner: Text | None = None


class GetAction(BaseModel):
    """``get = {src, dest}``: the remote file ``src`` into the local folder ``dest`` (relative
    to the plan's folder), one sub-folder per host."""

    model_config = _MODEL

    src: Text
    dest: Text


class TemplateAction(BaseModel):
    """``template = {src, dest, mode?}``: a local UTF-8 file rendered per host, put at ``dest``."""

    model_config = _MODEL

    src: Text
    dest: Text
    mode: Mode | None = None


Action: TypeAlias = str | PutAction | GetAction | TemplateAction


class Step(BaseModel):
    """One ``[[steps]]`` table: a name, exactly one action, and how to run it."""

    model_config = _MODEL

    name: Name
    run: Text | None = None
    put: PutAction | None = None
    get: GetAction | None = None
    template: TemplateAction | None = None
    creates: Text | None = None  # skip the step when this remote path exists
    unless: Text | None = None  # skip the step when this command succeeds
    only_if: Text | None = None  # run the step only when this command succeeds
    timeout: float | None = Field(default=None, gt=0)
    retries: int = Field(default=0, ge=0)
    retry_delay: float = Field(default=1.0, ge=0)
    until: Text | None = None  # retry until this command succeeds
    changed_when: ChangedWhen | None = None  # run steps only: "always" (default), "never", codes
    notify: list[Name] = Field(default_factory=list)
    tags: list[Name] = Field(default_factory=list)
    targets: Pattern | None = None  # narrows the plan's targets for this step

    @model_validator(mode="before")
    @classmethod
    def _run_changes_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "run" in data and "changed_when" not in data:
            return {**data, "changed_when": "always"}
        return data

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        given = [kind for kind in ACTIONS if getattr(self, kind) is not None]
        if not given:
            raise PydanticCustomError("step_action", "a step needs an action: one of run, put,"
                                      " get or template")
        if len(given) > 1:
            raise PydanticCustomError("step_action", f"a step has exactly one action of run, put,"
                                      f" get or template, not {' and '.join(given)}")
        if self.changed_when is not None and given[0] != "run":
            raise PydanticCustomError("changed_when", f"only a run step has changed_when (a"
                                      f" {given[0]} step changed when the file did)",
                                      {"field": "changed_when"})
        return self

    @property
    def kind(self) -> StepKind:
        """Which action the step takes."""
        for kind in ACTIONS:
            if getattr(self, kind) is not None:
                return kind
        raise AssertionError("a validated step has an action")

    @property
    def action(self) -> Action:
        """The action itself: the command of a run step, else its put/get/template table."""
        action: Action = getattr(self, self.kind)
        return action


class Handler(BaseModel):
    """One ``[[handlers]]`` table: a command run once per host at the end, when a changed step
    notified it."""

    model_config = _MODEL

    name: Name
    run: Text


class Health(BaseModel):
    """The ``[health]`` table: a command that must succeed on each host after its steps."""

    model_config = _MODEL

    run: Text
    retries: int = Field(default=0, ge=0)
    delay: float = Field(default=1.0, ge=0)


class PlanFile(BaseModel):
    """What a plan file holds, validated (``Plan`` adds where it came from)."""

    model_config = _MODEL

    name: Name
    targets: Pattern
    serial: Serial = Field(default_factory=_one_batch)
    max_fail_percentage: float | None = Field(default=None, ge=0, le=100)
    forks: int | None = Field(default=None, ge=1)
    vars: dict[str, VarValue] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1)
    handlers: list[Handler] = Field(default_factory=list)
    health: Health | None = None

    @field_validator("vars")
    @classmethod
    def _variable_names(cls, value: dict[str, VarValue]) -> dict[str, VarValue]:
        for name in value:
            problem = variable_name_problem(name)
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _names_and_notify(self) -> PlanFile:
        steps: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            if step.name in steps:
                raise _error(("steps", index, "name"), f"steps[{steps[step.name]}] is named"
                             f" {step.name!r} too: each step needs a name of its own")
            steps[step.name] = index
        handlers: dict[str, int] = {}
        for index, handler in enumerate(self.handlers):
            earlier = (f"steps[{steps[handler.name]}]" if handler.name in steps
                       else f"handlers[{handlers[handler.name]}]" if handler.name in handlers
                       else None)
            if earlier is not None:
                raise _error(("handlers", index, "name"), f"{earlier} is named {handler.name!r}"
                             " too: steps and handlers need names of their own")
            handlers[handler.name] = index
        for index, step in enumerate(self.steps):
            for name in step.notify:
                if name not in handlers:
                    hint = (did_you_mean(name, handlers) if handlers
                            else " (the plan has no [[handlers]])")
                    raise _error(("steps", index, "notify"), f"no handler {name!r}{hint}")
        return self


def variable_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be set in ``[vars]`` or by ``--var``, or None if it can."""
    if not NAME.fullmatch(name):
        return (f"{name!r} is not a variable name (letters, digits and _, not starting with a"
                " digit)")
    if name in BUILTINS:
        return f"{name!r} is a built-in variable ({BUILTINS[name]}): it cannot be set"
    return None


def _error(at: tuple[str | int, ...], message: str) -> PydanticCustomError:
    """A plan-level check's error, reported at ``at`` as a field's own error is."""
    return PydanticCustomError("plan", message, {"at": at})


class Plan(PlanFile):
    """A loaded plan: the file's contents, its path and the SHA-256 of its bytes."""

    path: Path
    sha256: str

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read and validate a plan file (PlanError naming the file, the step and the field)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise PlanError(f"{path}: no such plan file") from None
        except OSError as exc:
            raise PlanError(f"{path}: cannot read the plan: {exc.strerror or exc}") from None
        data = _parse(raw, path)
        try:
            contents = PlanFile.model_validate(data)
        except ValidationError as exc:
            problems = [_describe(error, data, path)
                        for error in exc.errors(include_url=False, include_input=False)]
            raise PlanError("; ".join(problems)) from None
        fields = {name: getattr(contents, name) for name in PlanFile.model_fields}
        return cls(path=path, sha256=hashlib.sha256(raw).hexdigest(), **fields)

    @property
    def folder(self) -> Path:
        """The plan file's folder: local paths in the plan are relative to it."""
        return self.path.parent

    def where(self, table: Literal["steps", "handlers"], index: int) -> str:
        """How messages name a step or a handler: ``deploy.toml: step 'install' (steps[2])``."""
        name = (self.steps if table == "steps" else self.handlers)[index].name
        return _item_where(self.path, table, index, name)

    def schedule(self, inventory: Inventory, *, limit: str | None = None,
                 tags: Collection[str] = (), skip_tags: Collection[str] = (),
                 start_at: str | None = None,
                 extra_vars: Mapping[str, str] | None = None) -> Schedule:
        """What runs where: the targets (``limit`` intersected), in batches, each host's
        selected steps rendered (see ``rexec.deploy.schedule.build_schedule``)."""
        from rexec.deploy.schedule import build_schedule

        return build_schedule(self, inventory, limit=limit, tags=tags, skip_tags=skip_tags,
                              start_at=start_at, extra_vars=extra_vars)

    async def apply(self, inventory: Inventory | None = None, *, check: bool = False,
                    diff: bool = False, forks: int | None = None, limit: str | None = None,
                    tags: Collection[str] = (), skip_tags: Collection[str] = (),
                    start_at: str | None = None, extra_vars: Mapping[str, str] | None = None,
                    on_result: Callable[[StepResult], object] | None = None) -> DeployReport:
        """Schedule the plan (``inventory``: the default one when None) and run it; the
        per-host, per-step report. ``check``: the dry run that changes nothing; ``on_result``
        sees each step's result as it comes (see ``rexec.deploy.executor``)."""
        from rexec.deploy.executor import apply_plan

        return await apply_plan(self, inventory, check=check, diff=diff, forks=forks,
                                limit=limit, tags=tags, skip_tags=skip_tags, start_at=start_at,
                                extra_vars=extra_vars, on_result=on_result)


# -- reading and error messages ---------------------------------------------------------------


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PlanError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{path}: not valid TOML: {exc}") from None


def _item_where(path: Path, table: str, index: int, name: object) -> str:
    kind = "step" if table == "steps" else "handler"
    if isinstance(name, str):
        return f"{path}: {kind} {name!r} ({table}[{index}])"
    return f"{path}: {table}[{index}]"


def _describe(error: ErrorDetails, data: Mapping[str, Any], path: Path) -> str:
    """One validation error as ``FILE: step 'NAME' (steps[I]): field 'F': what is wrong``."""
    ctx = error.get("ctx") or {}
    loc = list(ctx.get("at", error["loc"]))
    where: str = str(path)
    model: type[BaseModel] = PlanFile
    if len(loc) >= 2 and loc[0] in ("steps", "handlers") and isinstance(loc[1], int):
        items = data.get(loc[0])
        item = items[loc[1]] if isinstance(items, list) else None
        name = item.get("name") if isinstance(item, dict) else None
        where = _item_where(path, str(loc[0]), loc[1], name)
        model = Step if loc[0] == "steps" else Handler
        loc = loc[2:]
    elif len(loc) >= 2 and loc[0] == "health":
        where, model, loc = f"{path}: [health]", Health, loc[1:]
    field = ".".join(str(part) for part in loc) or ctx.get("field", "")
    if error["type"] == "extra_forbidden":
        known = list(_model_at(model, loc[:-1]).model_fields)
        key = str(loc[-1])
        hint = did_you_mean(key, known) or f" (expected: {', '.join(known)})"
        return f"{where}: unknown field {field!r}{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "list_type" and loc in (["steps"], ["handlers"]):
        message += f" (each one a [[{loc[0]}]] table)"
    return f"{where}: field {field!r}: {message}" if field else f"{where}: {message}"


def _model_at(model: type[BaseModel], loc: Iterable[object]) -> type[BaseModel]:
    """The model a nested table's location names (``put`` in a Step: PutAction)."""
    for part in loc:
        info = model.model_fields.get(str(part))
        nested = [arg for arg in (info.annotation, *get_args(info.annotation))
                  if isinstance(arg, type) and issubclass(arg, BaseModel)] if info else []
        if not nested:
            break
        model = nested[0]
    return model
