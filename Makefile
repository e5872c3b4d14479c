# make experiment     venv + data + RoPE/learned/none on the CPU config, 3 seeds (the study `baseline`)
# make NAME           one study: python -m study NAME, its report in plots/NAME/ (python -m study --help lists them)
#   baseline          rope/learned/none on the CPU config, 3 seeds, length study             -> plots/baseline/
#   encodings         all seven encodings and five variants, 3-5 seeds, length study         -> plots/encodings/
#   lr_sweep          each encoding's learning rate, then 3 seeds at its best rate            -> plots/lr_sweep/
#   rope_study        p-RoPE fractions and RoPE bases at RoPE's best rate, 1 seed             -> plots/rope_study/
#   finetune          RoPE fine-tuned at 4x its length by PI, NTK, YaRN, plain                -> plots/finetune/
#   mid               rope/learned/none on the mid CPU config (about 80 minutes a run)        -> plots/mid/
#   gpu               rope/learned/none at nanoGPT's GPU setting, seed by seed in 520 s       -> plots/gpu/
#   passkey           every encoding trained on the passkey task, 3 seeds, read to 512        -> plots/passkey/
#                     (30 runs of about 5 minutes on 2 cores, then the readings and fine-tunes)
#   copy              every encoding trained on the copy task, 3 seeds, read to 512           -> plots/copy/
#                     (30 runs, then the readings and fine-tunes; its records were trained with JOBS=2:
#                     two at a time, 1 thread each, 11-17 minutes a run, about 4 hours in all)
#   rope_break        why RoPE breaks: ablations, RoPE/NoPE hybrids, FIRE from L = 16         -> plots/rope_break/
#   mechanism         why RoPE cannot use what lies past 64: the readings, the windowed hybrid -> plots/mechanism/
#   summary           the README's summary figure, from committed files (trains nothing)      -> plots/summary/
# make test           venv + the test suite
# make bench          speed of each encoding on this machine
# SHAKESPEARE_INPUT=/path/to/input.txt make experiment    works offline
# SEEDS=1337 make experiment                             one seed, a quick look: report in out/plots/baseline
# JOBS=3 make experiment                                 3 runs at a time (study.compare --jobs)

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
DATA       := data/shakespeare_char/test.bin
SEEDS      ?=
JOBS       ?= 1
STUDY      := $(PY) -m study --jobs $(JOBS) $(if $(SEEDS),--seeds $(SEEDS))

STUDIES    := baseline encodings lr_sweep rope_study finetune mid gpu passkey copy rope_break mechanism train_length summary

.PHONY: experiment $(STUDIES) test bench data clean

$(VENV)/.installed: requirements.txt
	@$(PYTHON_SYS) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python 3.11 or newer is needed (tomllib); $(PYTHON_SYS) is " + sys.version.split()[0] + ". Use PYTHON_SYS=python3.11 make ...")'
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DATA): | $(VENV)/.installed
	$(PY) prepare_shakespeare.py

data: $(DATA)

experiment: baseline

$(STUDIES): $(VENV)/.installed $(DATA)
	$(STUDY) $@

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed $(DATA)
	$(PY) -m study.bench --json plots/bench/bench.json

clean:
	rm -rf out
