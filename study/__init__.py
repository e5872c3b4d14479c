"""The studies: many train.py runs of one question each, and the tables, figures and samples that
answer it. Run a module with `python -m study.<module>` from the repository (e.g. study.compare,
study.sweep, study.bench); train.py, model.py, sample.py and prepare_shakespeare.py stay at the top."""
