# make experiment : venv + data + the three-encoding comparison on the CPU config (a few minutes)
# make test       : venv + the test suite
# SHAKESPEARE_INPUT=/path/to/input.txt make experiment   works offline

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
DATA       := data/shakespeare_char/meta.json

.PHONY: experiment test data clean

$(VENV)/.installed: requirements.txt
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DATA): | $(VENV)/.installed
	$(PY) prepare_shakespeare.py

data: $(DATA)

experiment: $(VENV)/.installed $(DATA)
	$(PY) compare.py config/shakespeare_char_cpu.toml

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

clean:
	rm -rf out
