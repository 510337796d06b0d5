# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use (CPU torch wheel, pinned by constraints.txt).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out/demo
MODELS_OUT ?= out/models

.PHONY: demo test install clean models

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/cellgen demo $(OUT)

# The shipped demo models (cellgen/models/demo-*.pt + SHA256SUMS), rebuilt bit for bit on CPU:
# a fresh `cellgen demo` run (same pipeline and configs/demo.yaml), then export of its 3 lines.
models: $(BIN)/.installed
	rm -rf $(MODELS_OUT)
	$(BIN)/cellgen demo $(MODELS_OUT)
	$(BIN)/python -m cellgen.models $(MODELS_OUT)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
