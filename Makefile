# gradcli: `make demo` and `make test` set everything up on a fresh machine (Python 3.11 + make).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast smoke dist lint format bench bench-hessian bench-quick samples clean

install: $(STAMP)

# pip's and setuptools' chatter goes to $(VENV)/install.log, shown in full if set-up fails
$(STAMP): pyproject.toml
	@echo "Setting up $(VENV) (the first time installs TensorFlow: a minute or two)..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@( $(BIN)/python -m pip install --quiet --upgrade pip \
	  && $(BIN)/python -m pip install --quiet -e '.[dev]' ) >$(VENV)/install.log 2>&1 \
	  || { cat $(VENV)/install.log; echo "set-up failed (log: $(VENV)/install.log)"; exit 1; }
	@touch $(STAMP)
	@echo "Set up: $(BIN)/gradcli"

demo: $(STAMP)
	@bash sample_models/demo.sh

# two pytest-xdist workers (the machine's 2 cores): everything, real processes included
test: $(STAMP)
	$(BIN)/python -m pytest -n 2

# while developing: every test that needs no real gradcli process (marked `slow` otherwise)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow"

# gradcli as users install it (README "Install"): each recipe in a fresh environment, every
# command from an empty directory outside the checkout, the pre-commit hook (3-4 minutes)
smoke: $(STAMP)
	$(BIN)/python scripts/smoke.py

# the sdist and wheel a release would upload, into dist/
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# about 40 minutes on 2 cores (ResNet50 and six keras.applications models built once into
# bench-out/; influenciae and PyHessian installed once into venvs of their own under
# bench-out/); bench-quick: a smoke run of each script (a few minutes)
bench: $(STAMP) bench-hessian
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/architectures.py
	$(BIN)/python bench/gradcam.py
	$(BIN)/python bench/persample.py
	$(BIN)/python bench/tracin_noise.py
	$(BIN)/python bench/influenciae_compare.py

# one HVP against one gradient (goal <= 2.5x), and gradcli hessian beside PyHessian on twin
# models (PyTorch in a venv of its own under bench-out/; about 5 minutes)
bench-hessian: $(STAMP)
	$(BIN)/python bench/hvp_modes.py
	$(BIN)/python bench/pyhessian_compare.py

bench-quick: $(STAMP)
	$(BIN)/python bench/bench.py --quick --skip-memory
	$(BIN)/python bench/architectures.py --quick

samples: $(STAMP)
	$(BIN)/python sample_models/make_samples.py

clean:
	rm -rf $(VENV) demo-out bench-out dist build *.egg-info
