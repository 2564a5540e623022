# Two commands on a fresh machine: `make demo` and `make test`. `make setup` is what both share.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: setup browser dicom-tools lint demo test test-unit test-integration bench validate soak-backfill lambda-asset lock clean

setup: $(STAMP)

# Re-installs only when pyproject.toml or constraints.txt change. torch comes
# from the exact pin (2.13.0, the CPU wheel on machines without CUDA).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[local,test]'
	rm -f $(VENV)/.installed-*
	touch $@

# The web page is tested in a real headless Chromium (Debian's package; Playwright
# drives it, and never downloads a browser of its own).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: Chromium not found and cannot install it here; the web test will skip" >&2; fi; }

# DICOM validators the tests hold our output to: dicom3tools (dciodvfy, dcentvfy) and dcmtk.
dicom-tools:
	@command -v dciodvfy >/dev/null 2>&1 && command -v dcmftest >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools dcmtk >/dev/null; \
	  else echo "note: dicom3tools/dcmtk not found and cannot install them here; the validator tests will skip" >&2; fi; }

demo: setup
	$(BIN)/ctfleet demo

# Type checks of ctfleet/, model/, worker/ and dispatcher/ (settings in pyproject.toml).
lint: setup
	$(BIN)/python -m mypy

test: setup browser dicom-tools lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

# Speed as ratios to pydicom's own read time, measured in the same run (not part of `make test`).
bench: setup
	$(BIN)/python -m ctfleet.dev.bench --out docs/benchmarks.md

# The functions' code (ctfleet/ and dispatcher/ with their pinned dependencies, no torch) for `pulumi up`.
lambda-asset: setup
	$(BIN)/python -m infra.asset --out build/lambda.zip

# The backfill acceptance run at full size: 200 generated studies through the local stack,
# killed with SIGKILL midway and resumed (make test runs the same test on 10 studies).
soak-backfill: setup
	CTFLEET_BACKFILL_STUDIES=200 $(BIN)/python -m pytest tests/integration/test_backfill.py --timeout 3600 $(PYTEST_ARGS)

# Synthetic lesions of known size inserted into the real CT and phantoms; writes docs/validation.md.
validate: setup
	$(BIN)/python -m ctfleet.dev.validate --out docs/validation.md

# Refresh the exact pins of every installed package after changing pyproject.toml.
lock: setup
	{ echo '# Exact versions of every package the test and local installs pull in (pip freeze).'; \
	  echo '# Regenerate with `make lock` after changing pyproject.toml.'; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^ctfleet' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
