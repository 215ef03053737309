# rexec developer tasks. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=

.PHONY: install demo test lint imports typecheck unit e2e bench bench-quick bench-fleet bench-pty bench-transfer bench-fleet-put bench-deploy bench-ping throughput soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .

imports: $(STAMP)
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q

# The side-by-side suite (bench/suite.py): rexec beside ssh, asyncssh and local spawning, on
# loopback; writes docs/benchmarks.md. Installs the `bench` extra (asyncssh, parallel-ssh) first, and
# Debian's openssh-server when /usr/sbin/sshd is missing. `make bench BENCH_ARGS=--quick`
# (or `make bench-quick`) for a short run.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py --quick $(BENCH_ARGS)

# The fleet row alone (50, 500 and 1,000 loopback hosts; a few minutes): rewrites only its own
# section of docs/benchmarks.md.
bench-fleet: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py --only fleet $(BENCH_ARGS)

# The PTY row alone (keystroke echo of `rexec shell` and `ssh -tt`, `cat` of 100 MB through
# `rexec run -t` and `ssh -tt`; about a minute): rewrites only its own section of docs/benchmarks.md.
bench-pty: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py --only pty $(BENCH_ARGS)

# The file transfer rows alone (1 GiB up and down beside scp, sftp and asyncssh's SFTP, and an
# unchanged re-put; then a fleet put of 100 MB to 20 hosts; a few minutes): rewrite only their
# own sections of docs/benchmarks.md. `make bench-fleet-put` runs the fleet put alone.
bench-transfer: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py --only transfer,fleet-put $(BENCH_ARGS)

bench-fleet-put: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py --only fleet-put $(BENCH_ARGS)

# The deploy row alone (a 4-step plan on 100 and 500 loopback hosts, first and second run,
# beside pyinfra and, at 100 hosts, Ansible; about 27 minutes, most of it theirs): rewrites
# only its own section.
bench-deploy: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py --only deploy $(BENCH_ARGS)

# The UDP ping row alone (rexec ping of 256 loopback hosts beside fping, the server's CPU per
# 10,000 probes, reply times under a bounded flood; about a minute): rewrites only its section.
bench-ping: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py --only ping $(BENCH_ARGS)

throughput: $(STAMP)
	$(BIN)/python bench/throughput.py

soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
