# The two commands of the README: `make demo` and `make test`. Each sets up .venv first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip on this machine takes this torch pair from local disk; other versions would be downloaded
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-slow export check-export readme clean

$(BIN)/fastai-ssl: setup.py settings.ini
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH) 2>&1 | grep -v 'is ignored' || true
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v 'is ignored' || true
	$(BIN)/python -c "import fastai_ssl.all, torch, torchvision; print('fastai_ssl ready: torch', torch.__version__)"
	touch $@

setup: $(BIN)/fastai-ssl

demo: setup
	$(BIN)/fastai-ssl demo --plot demo.png

export: setup
	$(BIN)/nbdev-export

check-export: export
	@git diff --quiet -- fastai_ssl && test -z "$$(git status --porcelain -- fastai_ssl)" \
	  || { echo "nbdev-export changed fastai_ssl/: the notebooks and the package disagree"; git status --short -- fastai_ssl; exit 1; }

test: check-export
	$(BIN)/nbdev-test --n-workers 2 --timing
	$(BIN)/python -m pytest -n 2

test-slow: check-export
	$(BIN)/nbdev-test --n-workers 2 --timing --flags slow
	$(BIN)/python -m pytest -n 2 -m ''

clean:
	rm -rf $(VENV) build *.egg-info _docs _proc

# README.md is generated from nbs/index.ipynb (nbdev-readme needs quarto, which cannot be installed from PyPI here); as in the docs, a cell marked `#| echo: false` shows its output only
readme: setup
	$(BIN)/jupyter nbconvert --to markdown nbs/index.ipynb --output-dir . --output README --log-level WARN
	sed -i '/^<style>/,/^<\/style>/d' README.md
	sed -i '/^```$$/{N;/\n#| echo: false$$/{:a;N;/\n```$$/!ba;d}}' README.md

# the docs site, from the notebooks' committed outputs (nbdev-docs needs quarto, which cannot be installed here)
.PHONY: docs
docs: setup
	$(BIN)/python docs/build.py _docs
