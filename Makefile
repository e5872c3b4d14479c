# make experiment      venv + data + rope/learned/none on the CPU config, 3 seeds, extrapolation study -> plots/
# make experiment-all  all seven encodings, sinusoidal without its sqrt(d) scale and RoPE rotating half its pairs,
#                      3 seeds, 2 more for the variants of pairs that 3 seeds do not decide -> plots/all/ (reuses
#                      the runs above), and the biases T5 and FIRE learned -> plots/learned_bias.png
# make rope-study      RoPE at its best rate (4e-3) with 25/50/75/100% of its pairs rotating (p-RoPE) and with
#                      the base 100, 1000, 10000, 100000, 1 seed, extrapolation study -> plots/rope_study/
# make finetune        short fine-tunes of the RoPE runs at 4x their length (PI, NTK, YaRN, plain), 1 seed, then
#                      3 for the two best, and RoPE trained from scratch at 256 -> plots/finetune/
# make experiment-mid  rope/learned/none on the mid CPU config (4.7M parameters, 18 epochs, long enough for the
#                      val loss to turn up; about 80 minutes a run), 1 seed -> plots/shakespeare_char_mid/
# make sweep           learning-rate sweep of the seven and sinusoidal without its scale, then 3 seeds at each
#                      one's best rate
#                      -> plots/lr_sweep.png, plots/lr_sweep/
# make test            venv + the test suite
# make bench           speed of each encoding on this machine
# SHAKESPEARE_INPUT=/path/to/input.txt make experiment    works offline
# SEEDS=1337 make experiment                             one seed: a quick look
# JOBS=3 make experiment                                 3 runs at a time (study.compare --jobs)

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
DATA       := data/shakespeare_char/test.bin
CONFIG     ?= config/shakespeare_char_cpu.toml
SEEDS      ?= 1337,1338,1339
MORE_SEEDS ?= 1340,1341
SWEEP      := all,sinusoidal:sinusoidal_scale=false
VARIANTS   := $(SWEEP),rope:rope_fraction=0.5
ROPE_LR    := rope:learning_rate=0.004:min_lr=0.0004
FRACTIONS  := $(ROPE_LR):rope_fraction=0.25,$(ROPE_LR):rope_fraction=0.5,$(ROPE_LR):rope_fraction=0.75
BASES      := $(ROPE_LR):rope_theta=100,$(ROPE_LR):rope_theta=1000,$(ROPE_LR):rope_theta=100000
JOBS       ?= 1

.PHONY: experiment experiment-all experiment-mid rope-study finetune sweep test bench data clean

$(VENV)/.installed: requirements.txt
	@$(PYTHON_SYS) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python 3.11 or newer is needed (tomllib); $(PYTHON_SYS) is " + sys.version.split()[0] + ". Use PYTHON_SYS=python3.11 make ...")'
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DATA): | $(VENV)/.installed
	$(PY) prepare_shakespeare.py

data: $(DATA)

experiment: $(VENV)/.installed $(DATA)
	$(PY) -m study.compare $(CONFIG) --seeds $(SEEDS) --jobs $(JOBS) --extrapolate

experiment-all: $(VENV)/.installed $(DATA)
	$(PY) -m study.compare $(CONFIG) --pos-encodings $(VARIANTS) --seeds $(SEEDS) --seeds-if-undecided $(MORE_SEEDS) \
		--jobs $(JOBS) --extrapolate --plots-dir plots/all
	$(PY) -m study.plot_bias --plots-dir plots

experiment-mid: $(VENV)/.installed $(DATA)
	$(PY) -m study.compare config/shakespeare_char_mid.toml --seeds 1337 --jobs $(JOBS) --plots-dir plots/shakespeare_char_mid

rope-study: $(VENV)/.installed $(DATA)
	$(PY) -m study.compare $(CONFIG) --pos-encodings $(ROPE_LR),$(FRACTIONS),$(BASES) --seeds 1337 --jobs $(JOBS) --extrapolate \
		--extrapolate-methods none,ntk --plots-dir plots/rope_study
	$(PY) -m study.plot_rope --bases 100,1000,10000,100000 --plots-dir plots/rope_study

finetune: $(VENV)/.installed $(DATA)
	$(PY) -m study.finetune $(CONFIG) --seeds 1337 --more-seeds 1338,1339 --scratch-seeds 1337 --plots-dir plots/finetune

sweep: $(VENV)/.installed $(DATA)
	$(PY) -m study.sweep $(CONFIG) --pos-encodings $(SWEEP) --seeds $(SEEDS) --jobs $(JOBS) --plots-dir plots

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed $(DATA)
	$(PY) -m study.bench --json plots/bench.json

clean:
	rm -rf out
