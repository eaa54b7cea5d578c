# `make demo` and `make test` each set up a virtual environment first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 + torchvision 0.29.1 lie on this project's CI machines' disk; GPU users bring their own.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c constraints.txt -e ".[train,eval,serve,test,bench]"
	touch $@

demo: setup
	$(VENV)/bin/rewarddance demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/score.py --quick

clean:
	rm -rf $(VENV) runs out
