# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv if missing and installs torch first (override: make demo TORCH=torch==2.5.1).
PY     ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(subst =,-,$(subst <,,$(subst >,,$(TORCH))))
DEMO   ?= demo

.PHONY: demo test lint format bench bench-coreset install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[data,dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@mkdir -p $(DEMO)
	$(BIN)/distill-data build --dataset mnist5k --method herding --ipc 10 --out $(DEMO)/mnist5k_herding_ipc10.h5
	$(BIN)/distill-data show $(DEMO)/mnist5k_herding_ipc10.h5 --out $(DEMO)/mnist5k_herding_ipc10.png
	$(BIN)/distill-data eval $(DEMO)/mnist5k_herding_ipc10.h5 --runs 3 --epochs 100 --baseline random --json $(DEMO)/mnist5k_herding_ipc10_eval.json
	@echo
	@echo "condensed set : $(DEMO)/mnist5k_herding_ipc10.h5"
	@echo "picture grid  : $(DEMO)/mnist5k_herding_ipc10.png"
	@echo "eval report   : $(DEMO)/mnist5k_herding_ipc10_eval.json"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check distill_data tests bench
	$(BIN)/ruff format --check distill_data tests bench

format: $(STAMP)
	$(BIN)/ruff format distill_data tests bench

bench-coreset: $(STAMP)
	$(BIN)/python bench/coreset.py
	$(BIN)/python bench/make_table.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
