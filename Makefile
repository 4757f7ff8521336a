# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv in the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first and pinned: the CPU build lies on local disk here; an unpinned torch may pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0

# Test workers: one per core (pytest-xdist), one thread each; each test file stays on one worker, so its fixtures
# are built once.
TEST_WORKERS ?= auto

.PHONY: venv demo test test-all clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: venv
	# One thread: the tiny model is too small to gain from two, and two spin against each other on a busy box.
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY) -m dreamcore demo --out demo-output

# The suite for people: everything but the tests marked slow (other processes, browsers, WebUI venvs).
test: venv
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Every test, the slow ones included: what CI runs (.ci/run).
test-all: venv
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --run-slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-output
