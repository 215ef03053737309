"""One thread reads and writes as another user while the rest of the process stays root.

Each switch happens on a thread started for it and discarded after, as a transfer's is: a
switched thread never goes back. The account is ``nobody``, as in the run_as tests of the
e2e suite.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rexec.server import fsuser
from rexec.server.transfer import FileRoots, TransferError, Upload, open_parent
from tests.helpers import credentials, public_directory

T = TypeVar("T")
ROOT_USER = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT_USER, reason="switching users needs root")
NOBODY = pwd.getpwnam("nobody")
THREAD_SELF = Path("/proc/thread-self/status")


def in_thread(call: Callable[[], T]) -> T:
    """``call()`` on a new thread, its result or its exception here."""
    outcome: list[Any] = []

    def main() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed back to the test
            outcome.append((False, exc))

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(30)
    assert outcome, "the thread did not finish"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory anyone may enter, holding a root-only file and a directory of nobody's."""
    with public_directory("rexec-fsuser-") as path:
        secret = path / "secret"
        secret.write_bytes(b"root only\n")
        secret.chmod(0o600)
        mine = path / "mine"
        mine.mkdir(mode=0o755)
        if ROOT_USER:
            os.chown(mine, NOBODY.pw_uid, NOBODY.pw_gid)
        yield path


@needs_root
def test_a_switched_thread_has_the_users_rights_and_the_others_keep_root(place: Path) -> None:
    before = credentials(THREAD_SELF)
    switched = threading.Event()
    release = threading.Event()
    seen: dict[str, Any] = {}

    def as_nobody() -> None:
        fsuser.become("nobody")
        seen["creds"] = credentials(THREAD_SELF)
        try:
            os.open(place / "secret", os.O_RDONLY)
        except PermissionError:
            seen["secret"] = "denied"
        try:
            os.close(os.open(place / "new-in-roots-dir", os.O_WRONLY | os.O_CREAT, 0o644))
        except PermissionError:
            seen["roots_dir"] = "denied"
        fd = os.open(place / "mine" / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        switched.set()
        release.wait(30)

    thread = threading.Thread(target=as_nobody)
    thread.start()
    try:
        assert switched.wait(30), seen
        # while the other thread is switched, this one still is root and still reads the file
        assert credentials(THREAD_SELF) == before
        assert (place / "secret").read_bytes() == b"root only\n"
    finally:
        release.set()
        thread.join(30)
    creds = seen["creds"]
    assert creds["Uid"] == [0, 0, 0, NOBODY.pw_uid]  # only the filesystem user changed
    assert creds["Gid"] == [0, 0, 0, NOBODY.pw_gid]
    assert creds["Groups"] == sorted(set(os.getgrouplist("nobody", NOBODY.pw_gid)))
    assert creds["CapEff"] == [0]  # no capability acts for the user (CAP_SYS_RESOURCE...)
    assert (seen.get("secret"), seen.get("roots_dir")) == ("denied", "denied")
    assert not (place / "new-in-roots-dir").exists()
    new = (place / "mine" / "new").stat()
    assert (new.st_uid, new.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)  # the kernel's doing
    assert credentials(THREAD_SELF) == before


@needs_root
def test_a_replaced_file_becomes_the_users_and_keeps_a_group_it_is_in(place: Path) -> None:
    # The user may not give the new file to root; it keeps the old file's group only where
    # the user is in that group (4242 here: supplementary groups need no /etc/group entry).
    shared, foreign = place / "mine" / "shared.conf", place / "mine" / "foreign.conf"
    for path, gid in ((shared, 4242), (foreign, 4343)):
        path.write_bytes(b"old\n")
        os.chown(path, 0, gid)
        path.chmod(0o664)

    def replace_both() -> None:
        fsuser.switch_thread(NOBODY.pw_uid, NOBODY.pw_gid, [NOBODY.pw_gid, 4242])
        for path in (shared, foreign):
            with open_parent(FileRoots(None), str(path)) as parent, \
                    Upload(parent, size=4) as upload:
                upload.write(b"new\n")
                upload.commit(hashlib.sha256(b"new\n").hexdigest())

    in_thread(replace_both)
    owners = [(p.stat().st_uid, p.stat().st_gid, p.stat().st_mode & 0o7777, p.read_bytes())
              for p in (shared, foreign)]
    assert owners == [(NOBODY.pw_uid, 4242, 0o664, b"new\n"),
                      (NOBODY.pw_uid, NOBODY.pw_gid, 0o664, b"new\n")]


@needs_root
def test_a_setfsuid_that_does_not_take_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fsuser._syscall
    numbers = fsuser._numbers()

    def ignoring_setfsuid(number: Any, *args: Any) -> int:
        if number.value == numbers.setfsuid:
            return 0  # "the previous fsuid was 0", and nothing changed
        return int(real(number, *args))

    monkeypatch.setattr(fsuser, "_syscall", ignoring_setfsuid)
    with pytest.raises(TransferError) as caught:
        in_thread(lambda: fsuser.become("nobody", "/srv/x"))
    assert caught.value.code == "refused" and caught.value.path == "/srv/x"
    assert "setfsuid did not take" in str(caught.value) and "'nobody'" in str(caught.value)


def test_other_architectures_are_refused_before_any_system_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsuser.platform, "machine", lambda: "riscv64")
    monkeypatch.setattr(fsuser, "_syscall", lambda *args: pytest.fail("a system call was made"))
    with pytest.raises(OSError, match=r"not implemented on riscv64 .*x86_64, aarch64"):
        in_thread(lambda: fsuser.switch_thread(NOBODY.pw_uid, NOBODY.pw_gid, []))


def test_a_server_that_is_not_root_refuses_another_user_and_is_already_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsuser, "switch_thread", lambda *args: pytest.fail("switched"))
    monkeypatch.setattr(fsuser.os, "geteuid", lambda: NOBODY.pw_uid + 1)
    with pytest.raises(TransferError) as caught:
        fsuser.become("nobody", "/srv/x")
    assert caught.value.code == "refused"
    assert str(caught.value) == ("refused: transferring files as 'nobody' (run_as) needs the"
                                 " server to run as root")
    monkeypatch.setattr(fsuser.os, "geteuid", lambda: NOBODY.pw_uid)
    fsuser.become("nobody")  # the server's own user: nothing to switch, no refusal


def test_a_user_that_does_not_exist_is_refused() -> None:
    with pytest.raises(TransferError) as caught:
        fsuser.become("no-such-user-rexec", "/srv/x")
    assert caught.value.code == "refused" and "no-such-user-rexec" in str(caught.value)
