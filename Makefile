# Two commands set everything up on a fresh machine:
#   make bench   # create .venv if missing, install, run the default benchmark (~15 min on 2 CPU cores)
#   make test    # create .venv if missing, install with the dev extra, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: bench smoke test lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/normfree-bench run --suite default

smoke: $(STAMP)
	$(VENV)/bin/normfree-bench run --suite smoke

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
