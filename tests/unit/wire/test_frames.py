"""Header models: validated when built, immutable after."""

from __future__ import annotations

import subprocess
import sys
import typing
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from rexec.wire import frames as f
from rexec.wire.codec import decode_header, encode

NONCE = "ab" * 32
MODELS: tuple[type[BaseModel], ...] = typing.get_args(typing.get_args(f.Header)[0])
CONTROL = [m for m in MODELS if m.model_fields["type"].default not in f.DATA_FRAMES]
DATA = [m for m in MODELS if m.model_fields["type"].default in f.DATA_FRAMES]
EXIT = {"exit_code": 0, "duration": 0.5, "stdout_bytes": 0, "stderr_bytes": 0}

# One valid header per type, as keyword arguments.
SAMPLES: dict[str, dict[str, Any]] = {
    "hello": {"versions": [1], "nonce": NONCE},
    "challenge": {"version": 1, "nonce": NONCE},
    "auth": {"mac": NONCE},
    "auth_ok": {"mac": NONCE},
    "run": {"command": "true"},
    "shell": {"pty": {"term": "xterm", "rows": 24, "cols": 80}},
    "resize": {"window": {"rows": 50, "cols": 132}},
    "stdin": {"size": 1},
    "stdin_eof": {},
    "stdin_credit": {"amount": 4096},
    "signal": {"signal": "TERM"},
    "cancel": {},
    "stdout": {"size": 1},
    "stderr": {"size": 1},
    "exit": EXIT,
    "put": {"path": "/tmp/f", "file_size": 3, "sha256": "a" * 64},
    "put_ready": {},
    "file_data": {"size": 1},
    "file_credit": {"amount": 4096},
    "get": {"path": "/tmp/f"},
    "file_info": {"file_size": 3, "mode": 0o644, "mtime_ns": 0},
    "transfer_done": {"changed": True, "file_size": 3, "sha256": "a" * 64, "duration": 0.1},
    "put_end": {"sha256": "a" * 64},
    "put_dir": {"path": "/srv/app"},
    "put_link": {"path": "cur", "base": "/srv/app", "target": "v1"},
    "file_list": {"path": "/srv/app"},
    "stat": {"path": "/srv/app/current"},
    "file_entry": {"kind": "file", "path": "a", "mode": 0o644},
    "error": {"code": "oops", "message": "m"},
}


def build(model: type[BaseModel], **changes: Any) -> BaseModel:
    return model(**{**SAMPLES[model.model_fields["type"].default], **changes})


def field_error(exc: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    """The names of the fields that failed validation."""
    return {".".join(str(p) for p in err["loc"]) for err in exc.value.errors()}


def test_samples_cover_every_model() -> None:
    assert {m.model_fields["type"].default for m in MODELS} == set(SAMPLES)
    assert {"stdin", "stdout", "stderr", "file_data"} == f.DATA_FRAMES


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_headers_are_frozen(model: type[BaseModel]) -> None:
    header = build(model)
    with pytest.raises(ValidationError, match="frozen"):
        header.size = 5  # type: ignore[attr-defined]
    assert header.size == SAMPLES[header.type].get("size", 0)  # type: ignore[attr-defined]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_extra_fields_are_forbidden(model: type[BaseModel]) -> None:
    with pytest.raises(ValidationError) as info:
        build(model, surprise=1)
    assert field_error(info) == {"surprise"}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_sample_round_trips_through_the_codec(model: type[BaseModel]) -> None:
    header = build(model)
    body = b"x" * header.size  # type: ignore[attr-defined]
    raw = encode(header, body)  # type: ignore[arg-type]
    assert decode_header(raw[4 : len(raw) - len(body)]) == header
    assert isinstance(f.parse_header(header.model_dump()), model)


@pytest.mark.parametrize("model", [m for m in CONTROL if m is not f.Put],
                         ids=lambda m: m.__name__)
def test_control_frames_have_size_zero_only(model: type[BaseModel]) -> None:
    assert build(model).size == 0  # type: ignore[attr-defined]
    assert build(model, size=0).size == 0  # type: ignore[attr-defined]
    for bad in (1, -1, f.MAX_BODY_SIZE, "0"):
        with pytest.raises(ValidationError) as info:
            build(model, size=bad)
        assert field_error(info) == {"size"}


@pytest.mark.parametrize("model", DATA, ids=lambda m: m.__name__)
def test_data_frame_size_bounds(model: type[BaseModel]) -> None:
    assert build(model, size=0).size == 0  # type: ignore[attr-defined]
    assert build(model, size=f.MAX_BODY_SIZE).size == f.MAX_BODY_SIZE  # type: ignore[attr-defined]
    for bad in (-1, f.MAX_BODY_SIZE + 1):
        with pytest.raises(ValidationError) as info:
            build(model, size=bad)
        assert field_error(info) == {"size"}
    with pytest.raises(ValidationError):
        model()  # size is required


STRICT_CASES = [
    (f.Stdout, {"size": "1"}, "size"),
    (f.Stdout, {"size": 1.0}, "size"),
    (f.Stdout, {"size": True}, "size"),
    (f.Challenge, {"version": True}, "version"),
    (f.Challenge, {"version": "1"}, "version"),
    (f.Hello, {"versions": [True]}, "versions.0"),
    (f.Hello, {"versions": (1,)}, "versions"),
    (f.Exit, {"exit_code": "0"}, "exit_code"),
    (f.Exit, {"exit_code": False}, "exit_code"),
    (f.Exit, {"duration": "0.5"}, "duration"),
    (f.Exit, {"duration": True}, "duration"),
    (f.Exit, {"stdout_bytes": 1.5}, "stdout_bytes"),
    (f.Exit, {"timed_out": 1}, "timed_out"),
    (f.Exit, {"signal": "9"}, "signal"),
    (f.Run, {"stdin": "yes"}, "stdin"),
    (f.Run, {"timeout": "5"}, "timeout"),
    (f.Run, {"command": b"true"}, "command"),
    (f.Error, {"fatal": 0}, "fatal"),
    (f.Auth, {"mac": 123}, "mac"),
    (f.AuthOk, {"mac": 123}, "mac"),
    (f.Hello, {"identity": 5}, "identity"),
    (f.AuthOk, {"identity": None}, "identity"),
    (f.Challenge, {"salt": 1234}, "salt"),
    (f.Challenge, {"method": None}, "method"),
]


@pytest.mark.parametrize(("model", "changes", "field"), STRICT_CASES,
                         ids=[f"{m.__name__}-{fld}-{next(iter(c.values()))!r}"
                              for m, c, fld in STRICT_CASES])
def test_types_are_strict(model: type[BaseModel], changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        build(model, **changes)
    assert field_error(info) == {field}


def test_float_fields_take_ints() -> None:
    assert f.Exit(**{**EXIT, "duration": 2}).duration == 2.0
    assert f.Run(command="x", timeout=5).timeout == 5.0


# --- handshake fields ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "nonce",
    ["ab" * 31, "ab" * 33, "AB" * 32, "g" * 64, "ab" * 31 + "a\n", " " + "a" * 63, ""],
    ids=["short", "long", "upper", "not-hex", "newline", "space", "empty"],
)
def test_nonces_and_macs_are_64_lowercase_hex(nonce: str) -> None:
    for model, name in ((f.Hello, "nonce"), (f.Challenge, "nonce"), (f.Auth, "mac"),
                        (f.AuthOk, "mac")):
        with pytest.raises(ValidationError) as info:
            build(model, **{name: nonce})
        assert field_error(info) == {name}


def test_hello_version_list_bounds() -> None:
    assert f.Hello(versions=[1] * 16, nonce=NONCE).versions == [1] * 16
    assert f.Hello(versions=[65535], nonce=NONCE).versions == [65535]
    for versions in ([], [1] * 17, [0], [65536], [-1]):
        with pytest.raises(ValidationError):
            f.Hello(versions=versions, nonce=NONCE)
    for version in (0, 65536):
        with pytest.raises(ValidationError):
            f.Challenge(version=version, nonce=NONCE)


def test_agent_is_at_most_200_characters() -> None:
    assert len(f.Hello(versions=[1], nonce=NONCE, agent="a" * 200).agent) == 200
    with pytest.raises(ValidationError) as info:
        f.Hello(versions=[1], nonce=NONCE, agent="a" * 201)
    assert field_error(info) == {"agent"}


SALT = "0f" * 16
GOOD_NAMES = ["a", "alice", "0", "x" * 64, "ops@example.com", "svc-1.prod_2", "A.B-C_D@E"]
BAD_NAMES = ["", "x" * 65, "-alice", ".alice", "_alice", "@alice", "al ice", "alice\n",
             "al/ice", "al$ice", "al\u00efce", "alice\x00", "CN=alice"]


def test_handshake_defaults() -> None:
    hello = f.Hello(versions=[1], nonce=NONCE)
    assert hello.identity is None
    challenge = f.Challenge(version=1, nonce=NONCE)
    assert (challenge.method, challenge.salt) == ("token", None)
    assert f.Auth().mac is None
    auth_ok = f.AuthOk()
    assert (auth_ok.mac, auth_ok.identity) == (None, "default")


def test_the_new_handshake_fields_round_trip_through_the_codec() -> None:
    for header in (
        f.Hello(versions=[1], nonce=NONCE, identity="alice"),
        f.Challenge(version=1, nonce=NONCE, method="token", salt=SALT),
        f.Challenge(version=1, nonce=NONCE, method="certificate", salt=None),
        f.Auth(mac=None),
        f.AuthOk(mac=None, identity="robot"),
        f.AuthOk(mac=NONCE, identity="alice"),
    ):
        raw = encode(header)
        assert decode_header(raw[4:]) == header
    assert b'"mac":null' in encode(f.Auth())  # every field is written, null included


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_identity_names_accepted(name: str) -> None:
    assert f.Hello(versions=[1], nonce=NONCE, identity=name).identity == name
    assert f.AuthOk(identity=name).identity == name


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:20] for n in BAD_NAMES])
def test_identity_names_refused(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        f.Hello(versions=[1], nonce=NONCE, identity=name)
    assert field_error(info) == {"identity"}
    with pytest.raises(ValidationError) as info:
        f.AuthOk(identity=name)
    assert field_error(info) == {"identity"}


@pytest.mark.parametrize("method", ["token", "certificate"])
def test_challenge_methods(method: str) -> None:
    assert f.Challenge(version=1, nonce=NONCE, method=method).method == method


@pytest.mark.parametrize("method", ["", "Token", "password", "cert", "certificate "])
def test_other_challenge_methods_are_refused(method: str) -> None:
    with pytest.raises(ValidationError) as info:
        f.Challenge(version=1, nonce=NONCE, method=method)
    assert field_error(info) == {"method"}


@pytest.mark.parametrize(
    "salt",
    ["0f" * 15, "0f" * 17, "0F" * 16, "g" * 32, "0f" * 16 + "\n", "", "0f" * 32],
    ids=["short", "long", "upper", "not-hex", "newline", "empty", "hex64"],
)
def test_salts_are_32_lowercase_hex(salt: str) -> None:
    with pytest.raises(ValidationError) as info:
        f.Challenge(version=1, nonce=NONCE, salt=salt)
    assert field_error(info) == {"salt"}


def test_salt_accepted() -> None:
    assert f.Challenge(version=1, nonce=NONCE, salt=SALT).salt == SALT


# --- run -----------------------------------------------------------------------------------


def test_run_accepts_shell_text_and_unicode() -> None:
    run = f.Run(command="echo 'a b' | cat; x=$(true) \u00e9\U0001f600",
                env={"A": "x=y", "B_2": "", "\u00c9": "\u2603"}, cwd="/", timeout=0.001)
    assert run.env["A"] == "x=y"
    assert run.stdin is False


RUN_REJECTS = [
    ("empty-command", {"command": ""}, "command", "at least 1"),
    ("long-command", {"command": "x" * (f.MAX_COMMAND_LENGTH + 1)}, "command", "at most"),
    ("nul-command", {"command": "echo a\x00b"}, "command", "NUL byte"),
    ("surrogate-command", {"command": "echo \ud800"}, "command", "string"),
    ("nul-cwd", {"cwd": "/tmp\x00"}, "cwd", "NUL byte"),
    ("surrogate-cwd", {"cwd": "/\udfff"}, "cwd", "string"),
    ("empty-cwd", {"cwd": ""}, "cwd", "at least 1"),
    ("nul-env-name", {"env": {"A\x00": "1"}}, "env", "NUL byte"),
    ("nul-env-value", {"env": {"A": "1\x00"}}, "env", "NUL byte"),
    ("surrogate-env-name", {"env": {"A\ud800": "1"}}, "env", "lone surrogate"),
    ("surrogate-env-value", {"env": {"A": "\udc80"}}, "env", "lone surrogate"),
    ("equals-env-name", {"env": {"A=B": "1"}}, "env", "no '='"),
    ("empty-env-name", {"env": {"": "1"}}, "env", "non-empty"),
    ("too-many-env", {"env": {f"V{i}": "" for i in range(f.MAX_ENV_ENTRIES + 1)}}, "env",
     "at most"),
    ("zero-timeout", {"timeout": 0}, "timeout", "greater than 0"),
    ("negative-timeout", {"timeout": -1.0}, "timeout", "greater than 0"),
    ("huge-timeout", {"timeout": 10_000_001.0}, "timeout", "less than or equal"),
    ("nan-timeout", {"timeout": float("nan")}, "timeout", ""),
    ("inf-timeout", {"timeout": float("inf")}, "timeout", ""),
]


@pytest.mark.parametrize(("name", "changes", "field", "fragment"), RUN_REJECTS,
                         ids=[r[0] for r in RUN_REJECTS])
def test_run_rejects(name: str, changes: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        f.Run(**{"command": "true", **changes})
    assert field_error(info) == {field}
    assert fragment in str(info.value)


def test_run_env_limit_is_inclusive() -> None:
    env = {f"V{i}": "" for i in range(f.MAX_ENV_ENTRIES)}
    assert len(f.Run(command="x", env=env).env) == f.MAX_ENV_ENTRIES


# --- signal, exit, error -------------------------------------------------------------------


@pytest.mark.parametrize("name", f.SIGNAL_NAMES)
def test_known_signal_names_are_accepted(name: str) -> None:
    assert f.Signal(signal=name).signal == name


@pytest.mark.parametrize("name", ["SIGINT", "int", "SEGV", "", 2, "INT "])
def test_other_signal_names_are_refused(name: object) -> None:
    with pytest.raises(ValidationError) as info:
        f.Signal(signal=name)
    assert field_error(info) == {"signal"}


@pytest.mark.parametrize(("changes", "ok"), [
    ({"exit_code": 0}, True),
    ({"exit_code": 255}, True),
    ({"exit_code": None, "signal": 9}, True),
    ({"exit_code": -1}, False),
    ({"exit_code": 256}, False),
    ({"signal": 1}, True),
    ({"signal": 128}, True),
    ({"signal": 0}, False),
    ({"signal": 129}, False),
    ({"duration": 0.0}, True),
    ({"duration": -0.001}, False),
    ({"duration": float("nan")}, False),
    ({"stdout_bytes": -1}, False),
    ({"stderr_bytes": -1}, False),
    ({"stdout_bytes": 2**40}, True),
    ({"exceeded": "max_output"}, True),
    ({"exceeded": None}, True),
    ({"exceeded": "max_time"}, False),
    ({"exceeded": ""}, False),
])
def test_exit_bounds(changes: dict[str, Any], ok: bool) -> None:
    if ok:
        exit_frame = f.Exit(**{**EXIT, **changes})
        for key, value in changes.items():
            assert getattr(exit_frame, key) == value
    else:
        with pytest.raises(ValidationError) as info:
            f.Exit(**{**EXIT, **changes})
        assert field_error(info) == set(changes)


def test_exit_code_is_required_even_if_none() -> None:
    fields = {k: v for k, v in EXIT.items() if k != "exit_code"}
    with pytest.raises(ValidationError) as info:
        f.Exit(**fields)
    assert field_error(info) == {"exit_code"}


@pytest.mark.parametrize("code", ["", "Bad", "1x", "_x", "a-b", "a b", "ok\n", "x" * 65])
def test_error_codes_are_snake_case_identifiers(code: str) -> None:
    with pytest.raises(ValidationError) as info:
        f.Error(code=code, message="m")
    assert field_error(info) == {"code"}


def test_error_fields() -> None:
    error = f.Error(code="bad_cwd2", message="x" * 4096)
    assert error.fatal is True
    assert f.Error(code="x" * 64, message="", fatal=False).fatal is False
    with pytest.raises(ValidationError) as info:
        f.Error(code="x", message="x" * 4097)
    assert field_error(info) == {"message"}


def test_parse_header_picks_the_model_by_type() -> None:
    assert isinstance(f.parse_header({"type": "stdout", "size": 3}), f.Stdout)
    assert isinstance(f.parse_header({"type": "stderr", "size": 3}), f.Stderr)
    with pytest.raises(ValidationError):
        f.parse_header({"type": "stdout", "size": 3, "signal": "INT"})


def test_models_by_tag_are_the_union_members() -> None:
    assert set(f.MODELS.values()) == set(MODELS)
    assert all(model.model_fields["type"].default == tag for tag, model in f.MODELS.items())


# Header-like JSON objects: a real tag (or a wrong one) with field values drawn from what the
# models accept and what they must refuse, so both outcomes of each model come up.
_json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70_000), st.floats(allow_nan=False),
    st.sampled_from([NONCE, "TERM", "max_output", "true", "x" * 65, "", "default", "a-b"]),
    st.text(max_size=8),
)
_json_value = st.one_of(_json_scalar, st.lists(_json_scalar, max_size=3),
                        st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))
_field_names = sorted({name for m in MODELS for name in m.model_fields} | {"bogus"})


@st.composite
def _header_objects(draw: st.DrawFn) -> dict[str, Any]:
    obj: dict[str, Any]
    if draw(st.integers(0, 3)) == 0:  # a tag that may be anything
        obj = {"type": draw(_json_value)}
    else:  # a valid header of a real type, then (or not) some fields changed
        tag = draw(st.sampled_from(sorted(SAMPLES)))
        obj = {"type": tag, **SAMPLES[tag]}
    changes = draw(st.sampled_from([0, 0, 1, 2]))
    obj.update(draw(st.dictionaries(st.sampled_from(_field_names), _json_value,
                                    min_size=changes, max_size=changes)))
    if draw(st.integers(0, 7)) == 0:
        del obj["type"]
    return obj


@given(_header_objects())
@example({"type": "get", "path": "/tmp/f", "base": "relative"})  # a validator's own ValueError
def test_parse_header_agrees_with_the_union(obj: dict[str, Any]) -> None:
    """The by-tag fast path accepts exactly what the discriminated union accepts, and a refused
    header gets the union's own error (locations start with the tag)."""
    try:
        expected = f.header_adapter().validate_python(obj, strict=True)
    except ValidationError as exc:
        with pytest.raises(ValidationError) as info:
            f.parse_header(obj)
        # A validator's ctx holds its ValueError, and exceptions compare by identity: the
        # message (in msg) is what must agree.
        assert info.value.errors(include_context=False) == exc.errors(include_context=False)
    else:
        got = f.parse_header(obj)
        assert type(got) is type(expected)
        assert got == expected


# --- bugs: these fail until rexec/wire/frames.py is fixed ---------------------------------------


@pytest.mark.parametrize("size", [False, 0.0], ids=["false", "float-zero"])
def test_control_frame_size_zero_is_strict(size: object) -> None:
    """``size: Literal[0]`` (frames.py line 50) accepts False and 0.0 even in strict mode.

    Every other numeric field refuses booleans and floats for ints; ``{"type": "cancel",
    "size": false}`` on the wire is accepted as a cancel frame.
    """
    with pytest.raises(ValidationError):
        f.parse_header({"type": "cancel", "size": size})


def test_exit_refuses_an_infinite_duration() -> None:
    """``Exit.duration`` (frames.py line 170) is ``Field(ge=0)``, so inf is valid.

    pydantic serialises inf as ``null``: the frame this side encodes is refused by the peer's
    decoder ("exit.duration: Input should be a valid number"). A header that validates should
    also encode to something that decodes back to it.
    """
    header = None
    try:
        header = f.Exit(**{**EXIT, "duration": float("inf")})
    except ValidationError:
        return  # refused when built: fine
    raw = encode(header)
    assert decode_header(raw[4:]) == header


def test_models_are_built_on_first_use_or_by_build_all() -> None:
    # In a fresh interpreter: this process has long since built them all.
    code = (
        "from rexec.wire import frames as f\n"
        "assert not any(m.__pydantic_complete__ for m in f.MODELS.values())\n"
        "f.Cancel()\n"
        "assert [t for t, m in f.MODELS.items() if m.__pydantic_complete__] == ['cancel']\n"
        "f.build_all()\n"
        "assert all(m.__pydantic_complete__ for m in f.MODELS.values())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_put_carries_its_whole_small_file_or_no_body() -> None:
    digest = "ab" * 32
    assert f.Put(path="/f", file_size=5, sha256=digest).size == 0
    whole = f.Put(path="/f", file_size=f.INLINE_PUT_MAX, sha256=digest, size=f.INLINE_PUT_MAX)
    assert whole.size == f.INLINE_PUT_MAX
    for bad in (-1, f.INLINE_PUT_MAX + 1, "3"):
        with pytest.raises(ValidationError) as info:
            f.Put(path="/f", file_size=3, sha256=digest, size=bad)
        assert field_error(info) == {"size"}
    with pytest.raises(ValidationError, match="size 3 is not file_size 4"):
        f.Put(path="/f", file_size=4, sha256=digest, size=3)  # a part of the file: no
    with pytest.raises(ValidationError, match="has its sha256, and no check"):
        f.Put(path="/f", file_size=3, sha256=None, size=3)  # hashed as sent: not with a body
    with pytest.raises(ValidationError, match="has its sha256, and no check"):
        f.Put(path="/f", file_size=3, sha256=digest, size=3, check=True)
