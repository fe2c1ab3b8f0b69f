# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
DEMO_TASKS ?= synth-digits synth-signs synth-glyphs

.PHONY: demo test .venv clean

.venv: $(VENV)/installed.stamp

$(VENV)/installed.stamp: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: .venv
	@for t in $(DEMO_TASKS); do $(BIN)/tailor train --task $$t --model-dir $(DEMO_DIR) --resume || exit 1; done
	$(BIN)/tailor export --model-dir $(DEMO_DIR) --bench --precision int8
	$(BIN)/tailor info --model-dir $(DEMO_DIR)
	$(BIN)/tailor report --model-dir $(DEMO_DIR)
	$(BIN)/python -m tailorrt.serving.demo --model-dir $(DEMO_DIR)

test: .venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
