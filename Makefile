# sharedcare — set-up, run and test. See README.md.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export SHAREDCARE_HOME ?= $(CURDIR)/var

.PHONY: install run test test-sqlite test-postgres lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/sharedcare db upgrade
	$(BIN)/sharedcare load --if-empty fixtures/demo
	$(BIN)/sharedcare serve --banner

# The whole suite, on SQLite and then on PostgreSQL (SHAREDCARE_TEST_DATABASE_URL overrides the server).
test: install
	SHAREDCARE_TEST_BACKEND=sqlite $(BIN)/pytest -n 2
	SHAREDCARE_TEST_BACKEND=postgresql $(BIN)/pytest -n 2

lint: install
	$(BIN)/ruff check engine mappings consent adapters tests bench tools

bench: install
	$(BIN)/python bench/read_search.py

clean:
	rm -rf $(VENV) var
