# Two commands do all the set-up on a fresh machine:
#   make run    executes both notebooks in place, full length, on real MNIST (baseline first)
#   make test   runs the test suite
# Both create .venv and install requirements.txt on first use.
VENV   := .venv
PYTHON := $(VENV)/bin/python
# Offline copy of MNIST beside the project, if there is one; otherwise torchvision downloads to ./data.
export MNIST_ROOT ?= $(if $(wildcard ../shared/mnist/MNIST/raw),$(abspath ../shared/mnist),$(CURDIR)/data)

NOTEBOOKS := LeNet-5.ipynb LeNet-5_sam_optim.ipynb

.PHONY: run test clean

$(VENV)/installed: requirements.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

run: $(VENV)/installed
	for nb in $(NOTEBOOKS); do \
	  $(PYTHON) -m jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=-1 --ExecutePreprocessor.kernel_name=python3 $$nb || exit 1; \
	done

test: $(VENV)/installed
	$(PYTHON) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
