"""Tests of rexec.fleet."""
