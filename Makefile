# Two entry points: `make demo` and `make test`. Both set up .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup data demo test lint typecheck bench clean

setup: $(STAMP)

# torch is pinned and installed first: an open range would pull several GB of CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps torchattacks
	touch $(STAMP)

# Fashion-MNIST from Debian where apt works; otherwise `robustlab demo` downloads the official
# files and checks their MD5s; only when both fail does it fall back to digits, loudly.
data:
	@[ -d /usr/share/datasets/fashion-mnist ] || ! command -v apt-get >/dev/null \
	  || apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	  || echo "note: apt-get could not install dataset-fashion-mnist; the demo will download it"

demo: setup data
	$(BIN)/robustlab demo --out results/demo

# DEVICE=cuda runs the device-parametrized tests on the GPU (see tests/conftest.py)
DEVICE ?= cpu
test: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest --device $(DEVICE)

bench: setup
	$(BIN)/python benchmarks/defect_overhead.py
	$(BIN)/python benchmarks/attacks.py
	$(BIN)/python benchmarks/csc.py --dict dicts/cifar10-jpeg-64x8
	$(BIN)/python benchmarks/csc_split.py --any-size
	$(BIN)/python benchmarks/universal.py --images 128
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/layout.py
	$(BIN)/python benchmarks/allocator.py
	$(BIN)/python benchmarks/scaling.py --write docs

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
