# `make demo` and `make test` create or reuse .venv and install the project into it,
# again only when pyproject.toml changes.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp
# torch and torchvision first, as a matching pair (timm needs torchvision).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
OPENPI_CLIENT ?= openpi-client==0.1.2
PYTEST_ARGS ?=
DEMO_ARGS ?=

export MUJOCO_GL ?= egl
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-all install clean bench

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[all,dev]"
	# openpi's own client, for the protocol tests: it pins numpy<2 and leaves typing_extensions undeclared.
	$(PY) -m pip install -q --no-deps $(OPENPI_CLIENT) typing_extensions
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vla demo --out runs/demo $(DEMO_ARGS)

# pytest exits 5 when it collected no tests; that is not a failure.
test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

test-all: $(STAMP)
	@$(PY) -m pytest -m "" $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

# The README's benchmark tables that take minutes, not hours: sims, Meta-World, model latency, training
# throughput, data memory, the 1B preset, the torch-free install, the fault table, and the control loop,
# phrasings and server load against the demo's export (made first if missing). The long runs (the ablation,
# the multi-task recipes) are run by the commands the README gives with their tables.
bench: $(STAMP)
	$(PY) benchmarks/sims_throughput.py
	$(PY) benchmarks/metaworld_suite.py
	$(PY) benchmarks/model_latency.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/llama_1b.py
	$(PY) benchmarks/base_install.py
	$(PY) benchmarks/fault_stops.py
	@test -f runs/demo/export/policy.json || $(VENV)/bin/vla demo --out runs/demo
	$(PY) benchmarks/data_memory.py --steps 150
	$(PY) benchmarks/pipelining.py runs/demo/export --episodes 30
	$(PY) benchmarks/phrasings.py runs/demo/export --episodes 50 --workers 2
	$(PY) benchmarks/server_load.py runs/demo/export

clean:
	rm -rf runs .pytest_cache
