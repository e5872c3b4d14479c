# make experiment      venv + data + rope/learned/none on the CPU config, 3 seeds, length study -> plots/
# make experiment-all  all seven encodings and five variants, 3-5 seeds, length study  -> plots/all/
# make sweep           each encoding's learning rate, then 3 seeds at its best rate     -> plots/lr_sweep/
# make rope-study      p-RoPE fractions and RoPE bases at RoPE's best rate, 1 seed       -> plots/rope_study/
# make finetune        RoPE fine-tuned at 4x its length by PI, NTK, YaRN, plain          -> plots/finetune/
# make experiment-mid  rope/learned/none on the mid CPU config (about 80 minutes a run) -> plots/shakespeare_char_mid/
# make experiment-gpu  rope/learned/none at nanoGPT's GPU setting, seed by seed in 520 s -> plots/shakespeare_char/
# make passkey         every encoding trained on the passkey task, 3 seeds, read to 512   -> plots/passkey/
#                      (30 runs of about 5 minutes on 2 cores, then the readings and fine-tunes)
# make copy            every encoding trained on the copy task, 3 seeds, read to 512      -> plots/copy/
#                      (30 runs, then the readings and fine-tunes; its records were trained with JOBS=2:
#                      two at a time, 1 thread each, 11-17 minutes a run, about 4 hours in all)
# make rope-break      why RoPE breaks: ablations, RoPE/NoPE hybrids, FIRE from L = 16    -> plots/rope_break/
# make test            venv + the test suite
# make bench           speed of each encoding on this machine
# Each study target is `python -m study NAME` (python -m study --help lists them and what they train).
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

.PHONY: experiment experiment-all experiment-mid experiment-gpu rope-study finetune sweep passkey copy rope-break
.PHONY: test bench data clean

$(VENV)/.installed: requirements.txt
	@$(PYTHON_SYS) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python 3.11 or newer is needed (tomllib); $(PYTHON_SYS) is " + sys.version.split()[0] + ". Use PYTHON_SYS=python3.11 make ...")'
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DATA): | $(VENV)/.installed
	$(PY) prepare_shakespeare.py

data: $(DATA)

experiment: $(VENV)/.installed $(DATA)
	$(STUDY) baseline

experiment-all: $(VENV)/.installed $(DATA)
	$(STUDY) all

experiment-mid: $(VENV)/.installed $(DATA)
	$(STUDY) mid

experiment-gpu: $(VENV)/.installed $(DATA)
	$(STUDY) gpu

rope-study: $(VENV)/.installed $(DATA)
	$(STUDY) rope

finetune: $(VENV)/.installed $(DATA)
	$(STUDY) finetune

sweep: $(VENV)/.installed $(DATA)
	$(STUDY) sweep

passkey: $(VENV)/.installed $(DATA)
	$(STUDY) passkey

copy: $(VENV)/.installed $(DATA)
	$(STUDY) copy

rope-break: $(VENV)/.installed $(DATA)
	$(STUDY) rope_break

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed $(DATA)
	$(PY) -m study.bench --json plots/bench/bench.json

clean:
	rm -rf out
