# The two commands a newcomer needs: `make demo` and `make test`. Both create or refresh .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medseg-installed

.PHONY: demo test lint venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Torch goes in first, pinned, so nothing later pulls a different (CUDA) build.
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dicom,pacs,report,demo,dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The main job end to end on real MRI: dataset, plan, train, predict, evaluate (pipelines/demo.yaml).
demo: $(STAMP)
	$(VENV)/bin/medseg run pipelines/demo.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
