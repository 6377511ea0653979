# The two commands of the README:
#   make demo   set up (virtual environment in .venv) and run the offline demo
#   make test   set up and run the test suite (what CI runs; about 10-12 minutes on 2 cores)
# and for everyday work:
#   make test-quick   the suite without the tests marked slow (under 2 minutes)
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test test-quick lint bench clean

$(BIN)/cnnviz: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/cnnviz
	$(BIN)/cnnviz demo

# pytest exits 5 when it collects no test: that is a failure here, not a pass.
test: $(BIN)/cnnviz
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-quick: $(BIN)/cnnviz
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(BIN)/cnnviz
	$(BIN)/ruff check cnnviz tests scripts

bench: $(BIN)/cnnviz
	$(BIN)/python scripts/bench_scan.py

clean:
	rm -rf $(VENV) cnnviz-demo .pytest_cache build *.egg-info
