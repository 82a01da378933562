# segshards: `make shards` builds the default MNIST shard sets, `make test` runs the test suite.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= shards
JOBS    ?= 0

.PHONY: install shards test lint typecheck check bench train clean

$(STAMP): pyproject.toml loaders/jpeg_window.c
	$(PY) -m venv $(VENV)
	# The CPU wheel of torch first (PyPI's Linux torch bundles CUDA, a multi-GB download): a `+cpu` build
	# exists only in pip's find-links (a wheel on disk, e.g. PIP_FIND_LINKS=/opt/wheels) and PyTorch's CPU
	# index, which is asked when no such wheel is on disk (and serves macOS its plain build).
	$(BIN)/pip install -q "torch==2.13.0+cpu" || $(BIN)/pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
	# constraints.txt pins every package of a known-good environment: pip resolves it in seconds.
	$(BIN)/pip install -q -e ".[dev]" -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

shards: $(STAMP)
	$(BIN)/segshards build mnist-foreground --out $(OUT)/mnist-foreground --jobs $(JOBS)
	$(BIN)/segshards build mnist-circle --out $(OUT)/mnist-circle --jobs $(JOBS)
	$(BIN)/segshards build mnist-grid --out $(OUT)/mnist-grid --jobs $(JOBS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# import-linter reads packages from disk by their installed names: LINT_TREE lays the repository's folders
# out as the installed `segshards` package (symlinks), and the layers contract in pyproject.toml runs on it.
LINT_TREE := $(VENV)/lint-tree

lint: $(STAMP)
	$(BIN)/ruff check writer loaders train tests bench
	$(BIN)/ruff format --check writer loaders train tests bench
	rm -rf $(LINT_TREE) && mkdir -p $(LINT_TREE)/segshards
	ln -s $(CURDIR)/writer/toplevel/__init__.py $(CURDIR)/writer/toplevel/__main__.py $(LINT_TREE)/segshards/
	for d in writer loaders train data; do ln -s $(CURDIR)/$$d $(LINT_TREE)/segshards/$$d; done
	cd $(LINT_TREE) && PYTHONPATH=$(CURDIR)/$(LINT_TREE) $(CURDIR)/$(BIN)/lint-imports --config $(CURDIR)/pyproject.toml

typecheck: $(STAMP)
	$(BIN)/mypy writer loaders train

# What CI runs (.ci/run): style, types, then the tests.
check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python -m bench

RECIPES := mnist-foreground mnist-circle mnist-grid

# Trains and evaluates the three MNIST tasks on the shards of `make shards` (built first if missing).
train: $(STAMP)
	@for r in $(RECIPES); do \
	  [ -f $(OUT)/$$r/manifest.json ] || $(BIN)/segshards build $$r --out $(OUT)/$$r --jobs $(JOBS) || exit 1; \
	  $(BIN)/segshards train $$r --data $(OUT)/$$r --out runs/$$r --threads 1 --resume || exit 1; \
	  $(BIN)/segshards eval runs/$$r --split test --threads 1 || exit 1; \
	done

clean:
	rm -rf $(OUT) runs bench-out
