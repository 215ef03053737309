"""A transfer's thread reads and writes as the identity's ``run_as`` user; the server stays root.

Linux checks a file access against the calling thread's filesystem user and group (fsuid,
fsgid) and its supplementary groups, and these belong to each thread: the kernel keeps
credentials per task. ``become()`` sets them on the calling thread only, for good: it is meant
for a connection's own transfer thread, which ends with the connection. Nothing here
may run on the event loop's thread or any other thread that outlives its connection.

The system calls are made raw, through ``syscall(2)``: glibc's ``setgroups()`` (and so
``os.setgroups``), ``setresuid()`` and their kind apply the change to every thread of the
process (POSIX wants a process-wide identity; glibc signals each thread to make it, the "setxid"
broadcast), which would turn the whole server into the user. The numbers are known for x86_64
and aarch64; elsewhere a transfer as another user is refused.

``setfsuid(2)`` and ``setfsgid(2)`` return the previous value, never an error, so each switch
is checked by asking again with -1 (an invalid id, which changes nothing). Moving fsuid away
from 0 makes the kernel drop the thread's filesystem capabilities (CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH, CAP_CHOWN, CAP_FOWNER, CAP_FSETID...); the thread then drops the rest of
its effective set too, so that neither CAP_SYS_RESOURCE (disk quotas and the blocks reserved
for root) nor any other capability acts on the user's behalf. Permitted capabilities are left
as they are: the thread never needs them again.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Sequence
from typing import NamedTuple

from rexec.server.exec.env import account
from rexec.server.transfer import TransferError


class _Numbers(NamedTuple):
    setgroups: int
    setfsuid: int
    setfsgid: int
    capget: int
    capset: int


_NUMBERS = {
    "x86_64": _Numbers(setgroups=116, setfsuid=122, setfsgid=123, capget=125, capset=126),
    "aarch64": _Numbers(setgroups=159, setfsuid=151, setfsgid=152, capget=90, capset=91),
}
_UNCHANGED = 0xFFFFFFFF  # (uid_t) -1: setfsuid/setfsgid change nothing and say the current id
_CAPABILITY_VERSION_3 = 0x20080522  # <linux/capability.h>: two 32-bit words per set


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _numbers() -> _Numbers:
    machine = platform.machine()
    numbers = _NUMBERS.get(machine)
    if numbers is None:
        raise OSError(f"switching one thread's user is not implemented on {machine or 'this'}"
                      f" architecture (only on {', '.join(_NUMBERS)})")
    return numbers


def _call(number: int, *args: object, what: str) -> int:
    """``syscall(number, args...)``; OSError naming ``what`` when it returns -1."""
    result = int(_syscall(ctypes.c_long(number), *args))
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def switch_thread(uid: int, gid: int, groups: Sequence[int]) -> None:
    """Give the calling thread alone these supplementary groups, fsgid and fsuid (and, for a
    uid other than 0, no effective capabilities); OSError if any of it did not take."""
    calls = _numbers()
    array = (ctypes.c_uint32 * len(groups))(*groups)  # gid_t: 32 bits on Linux
    _call(calls.setgroups, ctypes.c_long(len(groups)), array, what="setgroups")
    if set(os.getgroups()) != set(groups):  # getgroups(2) reads the calling thread's
        raise OSError(f"the supplementary groups did not change to {sorted(set(groups))}")
    _call(calls.setfsgid, ctypes.c_long(gid), what="setfsgid")
    if (now := _call(calls.setfsgid, ctypes.c_long(_UNCHANGED), what="setfsgid")) != gid:
        raise OSError(f"the filesystem group is {now}, not {gid}: setfsgid did not take")
    _call(calls.setfsuid, ctypes.c_long(uid), what="setfsuid")
    if (now := _call(calls.setfsuid, ctypes.c_long(_UNCHANGED), what="setfsuid")) != uid:
        raise OSError(f"the filesystem user is {now}, not {uid}: setfsuid did not take")
    if uid != 0:
        _drop_effective_capabilities(calls)


def _drop_effective_capabilities(calls: _Numbers) -> None:
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)  # pid 0: the calling thread
    data = (_CapData * 2)()
    _call(calls.capget, ctypes.byref(header), data, what="capget")
    for word in data:
        word.effective = 0
    _call(calls.capset, ctypes.byref(header), data, what="capset")
    _call(calls.capget, ctypes.byref(header), data, what="capget")
    if any(word.effective for word in data):
        raise OSError("the thread's effective capabilities could not be dropped")


def become(run_as: str, path: str = "") -> None:
    """Make the calling thread (a transfer's own) read and write as ``run_as``, for good.

    Raises ``refused`` (about ``path``) when it cannot: a user that does not exist, a server
    that is not root, a system call that failed. A server that is not root and already runs as
    that user has nothing to switch, as for a command.
    """
    try:
        user = account(run_as)
    except KeyError:
        raise TransferError("refused", f"refused: the run_as user {run_as!r} does not exist",
                            path) from None
    if os.geteuid() != 0:
        if user.uid == os.geteuid():
            return
        raise TransferError("refused", f"refused: transferring files as {run_as!r} (run_as)"
                            " needs the server to run as root", path)
    try:
        switch_thread(user.uid, user.gid, os.getgrouplist(user.name, user.gid))
    except OSError as exc:
        raise TransferError("refused", f"refused: cannot read and write files as {run_as!r}"
                            f" (run_as): {exc}", path) from None
