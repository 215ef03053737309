"""Network namespaces for end-to-end tests: ``ip`` itself, whether namespaces can be made
here, and a 10.X.0.0/16 that no address of this machine is in."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20,
                          check=check)


def netns_unavailable() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    probe = f"rexec-probe-{os.getpid()}"
    if ip("netns", "add", probe, check=False).returncode != 0:
        return "ip netns add is not permitted here"
    ip("netns", "del", probe, check=False)
    return None


def free_subnet() -> int:
    """A second octet X such that no address of this machine is in 10.X.0.0/16."""
    used = ip("-4", "-o", "addr").stdout + ip("-4", "route").stdout
    for x in [*range(200 + os.getpid() % 40, 240), *range(200, 240)]:
        if f" 10.{x}." not in used and f"\n10.{x}." not in used and not used.startswith(
                f"10.{x}."):
            return x
    pytest.skip("no free 10.X.0.0/16 for the namespaces")
