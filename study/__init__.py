"""The studies: many train.py runs of one question each, and the tables, figures and samples that
answer it. `python -m study NAME` runs a named study (studies.py defines each once); every module
also runs on its own from the repository, `python -m study.<module>` (compare, sweep, bench, ...).
train.py, model.py, sample.py and prepare_shakespeare.py stay at the top: they are what a user runs."""
