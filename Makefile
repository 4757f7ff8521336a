# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv in the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first and pinned: the CPU build lies on local disk here; an unpinned torch may pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test clean

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

test: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-output
