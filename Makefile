# make experiment      venv + data + rope/learned/none on the CPU config, 3 seeds, extrapolation study -> plots/
# make experiment-all  the same for all five encodings -> plots/all/ (reuses the runs above)
# make test            venv + the test suite
# make bench           speed of each encoding on this machine
# SHAKESPEARE_INPUT=/path/to/input.txt make experiment    works offline
# SEEDS=1337 make experiment                             one seed: a quick look
# JOBS=3 make experiment                                 3 runs at a time (compare.py --jobs)

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
DATA       := data/shakespeare_char/meta.json
CONFIG     ?= config/shakespeare_char_cpu.toml
SEEDS      ?= 1337,1338,1339
JOBS       ?= 1

.PHONY: experiment experiment-all test bench data clean

$(VENV)/.installed: requirements.txt
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DATA): | $(VENV)/.installed
	$(PY) prepare_shakespeare.py

data: $(DATA)

experiment: $(VENV)/.installed $(DATA)
	$(PY) compare.py $(CONFIG) --seeds $(SEEDS) --jobs $(JOBS) --extrapolate

experiment-all: $(VENV)/.installed $(DATA)
	$(PY) compare.py $(CONFIG) --pos-encodings all --seeds $(SEEDS) --jobs $(JOBS) --extrapolate --plots-dir plots/all

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed $(DATA)
	$(PY) bench.py --json plots/bench.json

clean:
	rm -rf out
