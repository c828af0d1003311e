# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: demo demo-geo demo-catalogue demo-music test dev defs serve install lint benchmark clean

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e ".[dev]"
	# MusiCNN's pretrained weights only (its pins, numpy<1.17 and TensorFlow 1, would break the venv; we run it in torch).
	$(VENV)/bin/pip install --no-deps "musicnn==0.1.0"
	touch $@

install: $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	touch $@

## Build, check and publish today's indices for all five niches (offline sample source).
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/thumblab demo

## Generate a small synthetic embedding mosaic (300 x 400, 128 bands), build, check and publish it, and search it.
demo-geo: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/thumblab geo demo

## Generate a few synthetic tracks (two styles), analyse (Essentia + MusiCNN), build and publish them, print two playlists.
demo-music: install
	$(VENV)/bin/thumblab music demo

## Build the bundled sample catalogue (110 products, shards of 50), add 10 and build again (only those embedded), run the checker.
demo-catalogue: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/thumblab catalogue demo

## Install and run the test suite.
test: install
	$(VENV)/bin/pytest -p no:cacheprovider

## The Dagster UI on http://127.0.0.1:3000 (runs, checks, schedule), reading workspace.yaml.
dev: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## `dg check defs` and `dg list defs`: the code location loads, and what it holds.
defs: install
	$(VENV)/bin/dg check defs
	$(VENV)/bin/dg list defs

## The scoring service on http://127.0.0.1:8000 (/health, POST /v1/score, /docs) over the published indices.
serve: install
	$(VENV)/bin/thumblab serve --host 127.0.0.1 --port 8000

lint: install
	$(VENV)/bin/ruff check thumblab_dagster thumblab_dagster_tests benchmarks

benchmark: install
	$(VENV)/bin/python benchmarks/embed_throughput.py

clean:
	rm -rf $(VENV) .dagster_home thumblab_data
