# Two entry points: `make train` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install train test benchmark check-cuda clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,lite0]"
	touch $(STAMP)

train: install
	$(PY) tools/train.py --config configs/shapes.yaml $(ARGS)

# pytest exits 5 when it collects no tests; that is not a failure of the suite
test: install
	$(PY) -m pytest -q -n auto $(ARGS) || [ $$? -eq 5 ]

benchmark: install
	$(PY) tools/benchmark.py model

# on a GPU machine: every CUDA path in about 8 minutes, report in runs/check_cuda/ (ARGS=--dry-run: anywhere)
check-cuda: install
	$(PY) tools/check_cuda.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
