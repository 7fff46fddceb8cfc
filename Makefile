# Two entry points for a newcomer on Debian 12: `make demo` and `make test`.
# Both install what is missing (Debian packages, then a virtualenv made from
# Debian's /usr/bin/python3 so that the `guestfs` module is importable) and are
# quick once done.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# libguestfs: KVM is broken on our build machines (qemu aborts on MSR 0x10a);
# TCG is slower but works everywhere. Users may override.
export LIBGUESTFS_BACKEND ?= direct
export LIBGUESTFS_BACKEND_SETTINGS ?= force_tcg
export VMSCAN_CACHE ?= $(CURDIR)/.cache

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

.cache/system.stamp: scripts/setup-system.sh
	@mkdir -p .cache
	bash scripts/setup-system.sh
	@touch $@

$(STAMP): pyproject.toml .cache/system.stamp
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,fleet]'
	$(PY) -c 'import guestfs' || { echo "python3-guestfs is not importable from $(VENV)" >&2; exit 1; }
	@touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) scripts/check_runtime_error.py
	$(VENV)/bin/lint-imports

test: setup lint
	$(VENV)/bin/pytest -q -n auto --dist loadfile --durations=25

demo: setup
	$(PY) -m fixtures demo --out .cache/demo
	$(VENV)/bin/vmscan nightly --config demo/vmscan-demo.toml; \
	  rc=$$?; echo "vmscan exit code $$rc (1: the demo guests carry EICAR, a critical finding)"; \
	  echo "reports: reports/latest/report.json, report.html, report.sarif"; [ $$rc -le 1 ]

bench: setup
	$(PY) benchmarks/bench_jobs.py
	$(PY) benchmarks/bench_nightly.py
	$(PY) benchmarks/bench_datapath.py
	$(PY) benchmarks/bench_fleet.py

clean:
	rm -rf $(VENV) .cache
