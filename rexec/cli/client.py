"""The ``rexec`` entry point's first home, kept for installs that still name it: see main.py."""

from __future__ import annotations

from rexec.cli.main import main

__all__ = ["main"]
