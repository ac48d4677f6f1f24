# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv if missing and installs torch first (override: make demo TORCH=torch==2.5.1;
# CPU-only torch from PyTorch's index: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu).
PY     ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(subst =,-,$(subst <,,$(subst >,,$(TORCH))))
DEMO   ?= demo
DEMO_IPC    ?= 1
DEMO_ITERS  ?= 50
DEMO_RUNS   ?= 3
DEMO_EPOCHS ?= 300
DEMO_SET    := $(DEMO)/mnist5k_dm_ipc$(DEMO_IPC)

.PHONY: demo test lint format bench bench-coreset install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[data,dev,deploy,kernels]"
	@touch $(STAMP)

install: $(STAMP)

# The demo distils mnist5k (4,000 training digits) into ONE synthetic image per class
# with Distribution Matching, then trains fresh ConvNets on those 10 images and on 10
# random real ones: about 3 minutes on 2 CPU cores (README, "Two commands").
demo: $(STAMP)
	@mkdir -p $(DEMO)
	$(BIN)/distill-data build --dataset mnist5k --method dm --ipc $(DEMO_IPC) --iterations $(DEMO_ITERS) --out $(DEMO_SET).h5
	$(BIN)/distill-data show $(DEMO_SET).h5 --out $(DEMO_SET).png
	$(BIN)/distill-data eval $(DEMO_SET).h5 --runs $(DEMO_RUNS) --epochs $(DEMO_EPOCHS) --baseline random --json $(DEMO_SET)_eval.json
	@echo
	@echo "synthetic set : $(DEMO_SET).h5"
	@echo "picture grid  : $(DEMO_SET).png"
	@echo "eval report   : $(DEMO_SET)_eval.json"
	@$(BIN)/python -c 'import json, sys; r = json.load(open(sys.argv[1]))["results"]; s, b = r["synthetic"], r["random"]; \
	print("test accuracy of %d fresh ConvNets, each trained %d epochs on %d images:" % (s["runs"], s["epochs"], s["n_images"])); \
	print("  DM synthetic set   %6.2f ± %.2f %%" % (s["mean"], s["std"])); \
	print("  random real subset %6.2f ± %.2f %%" % (b["mean"], b["std"]))' $(DEMO_SET)_eval.json

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
