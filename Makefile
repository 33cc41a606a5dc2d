# One install step shared by the demo and the tests; both work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
# The torch build, installed before amr (make install TORCH='...' picks another build of the same release).
# torchaudio 2.11 loads beside torch 2.14.1, the pair pyproject.toml allows; the CPU-only torch 2.13.0+cpu
# breaks `import torchaudio` (2.9, 2.10 and 2.11 alike), and PyPI's Linux torch 2.14.1 is the CUDA build.
TORCH ?= torch==2.14.1 'torchaudio==2.11.*'

.PHONY: install demo test bench

install: $(VENV)/.installed

# Besides the venv and the torch build, exactly what a user's `pip install .` does (plus the test, plot and ray extras).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[test,plot,ray]'
	touch $@

demo: install
	SHARED=$(SHARED) PATH=$(abspath $(VENV))/bin:$$PATH bash examples/demo.sh

# The suite runs twice, so that no result depends on the CPU's kernels or the thread count: once
# whole on torch's generic kernels (ATEN_CPU_CAPABILITY=default, what any CPU computes) and 1 thread,
# slow tests included; then the tests that compute numbers (audio, models, search, metrics) again,
# on this CPU's own kernels and 2 threads. The rest (parsing, refusals, the CLI and the page) computes
# nothing a kernel could change, so once is enough and the whole stays under 15 minutes.
NUMERIC_TESTS := $(addprefix tests/test_,$(addsuffix .py,audio mobilenet encoder batcher extract text model zeroshot \
	query_encoder train index index_scale query metrics evaluate moments categorize))

test: install
	$(VENV)/bin/ruff check amr tests bench
	ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 AMR_SHARED=$(SHARED) $(PY) -m pytest -q
	OMP_NUM_THREADS=2 AMR_SHARED=$(SHARED) $(PY) -m pytest -q -m 'not slow' $(NUMERIC_TESTS)

bench: install
	$(PY) bench/extract.py
	$(PY) bench/train.py
	$(PY) bench/query.py
