# Two commands set everything up on a fresh machine:
#   make bench   # create .venv if missing, install, run the default benchmark (~15 min on 2 CPU cores)
#   make test    # create .venv if missing, install with the dev, tracking and hf extras, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: bench smoke test lint mutation mutation-sample clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev,tracking,hf]'
	touch $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/normfree-bench run --suite default

smoke: $(STAMP)
	$(VENV)/bin/normfree-bench run --suite smoke

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# Mutation testing of the modules where a wrong line changes a published number ([tool.mutmut] in
# pyproject.toml), with the fast test subset; writes results/mutation/. MUTANTS= narrows it to a glob.
MUTANTS ?=
mutation: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,mutation]'
	$(VENV)/bin/mutmut run --max-children $$(nproc) $(MUTANTS)
	$(PY) dev/mutation_report.py --out results/mutation

# The same, on a seeded sample of PER_MODULE mutants per module (dev/mutation_sample.py): an estimate of each
# module's score with its 95 % interval, in about an hour on 2 cores. The first mutmut call generates every
# mutant and the test-coverage stats, and checks the guard's mutants in full (mutmut needs a name that matches).
PER_MODULE ?= 20
mutation-sample: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,mutation]'
	$(VENV)/bin/mutmut run --max-children $$(nproc) 'normfree_bench.training.guard.*'
	$(VENV)/bin/mutmut run --max-children $$(nproc) $$($(PY) dev/mutation_sample.py --per-module $(PER_MODULE))
	$(PY) dev/mutation_report.py --out results/mutation

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs mutants
