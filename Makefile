# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export CDS_RULES_DIR ?= $(CURDIR)/rules

.PHONY: run test bench bench-http drill check-rules rules-test examples screenshots clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 (or 3.12) is required: durable-rules does not build on 3.13"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/cds run --dev

LINT_PATHS := cds tests bench rules fhir_examples

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy cds
	$(BIN)/python -m pytest

check-rules: $(STAMP)
	$(BIN)/cds rules check rules

rules-test: $(STAMP)
	$(BIN)/cds rules test rules

# rebuild the example requests and fhir_examples/README.md's table (from rules/tests/examples.yaml)
examples: $(STAMP)
	$(BIN)/python fhir_examples/generate.py

bench: $(STAMP)
	$(BIN)/python bench/bench_core.py

# the production entry point (auth, jti store and audit on a throw-away PostgreSQL) against a bare Flask
# fixed-card app under gunicorn, over loopback (bench/README.md)
bench-http: $(STAMP)
	$(BIN)/python bench/bench_http.py

# scale-out drill: two entry-point instances behind nginx on one throw-away PostgreSQL, one killed (-9) and
# restarted under load (bench/README.md); needs nginx and postgresql installed, installs nothing itself
drill: $(STAMP)
	$(BIN)/python bench/drill.py

# docs/img/*.png: the browser tests' named screenshots (the card with its trend, the app's history and record
# form), taken in Debian's chromium from the tests' own fixtures; fails rather than skips without chromium
screenshots: $(STAMP)
	CDS_BROWSER_REQUIRED=1 CDS_SCREENSHOTS_DIR=$(CURDIR)/docs/img $(BIN)/python -m pytest -q tests/test_browser_app.py

clean:
	rm -rf $(VENV) var build *.egg-info
