"""Tests of rexec.deploy."""
