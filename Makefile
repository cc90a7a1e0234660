# Three commands do all the set-up on a fresh machine:
#   make run    executes both notebooks in place, full length, on real MNIST (baseline first)
#   make lab    starts JupyterLab from the project's environment, to open the notebooks and run cells yourself
#   make test   runs the test suite (make lint: the linter, which CI runs first)
# Each creates .venv and installs requirements.txt on first use (test and lint: requirements-dev.txt too).
VENV   := .venv
PYTHON := $(VENV)/bin/python
# Offline copy of MNIST beside the project, if there is one; otherwise torchvision downloads to ./data.
export MNIST_ROOT ?= $(if $(wildcard ../shared/mnist/MNIST/raw),$(abspath ../shared/mnist),$(CURDIR)/data)
export FASHION_MNIST_ROOT ?= $(if $(wildcard ../shared/fashion-mnist/FashionMNIST/raw),$(abspath ../shared/fashion-mnist),$(CURDIR)/data)

NOTEBOOKS := LeNet-5.ipynb LeNet-5_sam_optim.ipynb

.PHONY: run lab test lint clean

$(VENV)/installed: requirements.txt requirements-nodeps.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/dev-installed: $(VENV)/installed requirements-dev.txt
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/installed
	for nb in $(NOTEBOOKS); do \
	  $(PYTHON) -m jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=-1 --ExecutePreprocessor.kernel_name=python3 $$nb || exit 1; \
	done

lab: $(VENV)/installed
	$(PYTHON) -m jupyter lab

test: $(VENV)/dev-installed
	$(PYTHON) -m pytest -q

lint: $(VENV)/dev-installed
	$(PYTHON) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
