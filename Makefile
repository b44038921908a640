# The README's two commands: `make book` and `make test`. Each sets itself up on a fresh machine.
PROFILE ?= cpu
CORES ?= 2
VENV ?= .venv
BIN := $(VENV)/bin
SNAKEMAKE := $(BIN)/snakemake -s workflow/Snakefile --cores $(CORES) --rerun-incomplete --printshellcmds
export PATH := $(abspath $(BIN)):$(PATH)
export MPLBACKEND := Agg
export HF_HUB_OFFLINE := 1
export PYTHONWARNINGS := ignore::SyntaxWarning

.PHONY: install results book test unit smoke nbval book-smoke bench clean

install: $(VENV)/.installed

# Pinned set (requirements.txt); torch/torchvision as the registry pair that runs on CPU.
$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

results: install
	$(SNAKEMAKE) --configfile workflow/config/$(PROFILE).yaml

book: results
	$(BIN)/jupyter-book build . -W -n --keep-going

test: install unit smoke nbval book-smoke

unit: install
	$(BIN)/python -m pytest tests -q

smoke: install
	$(MAKE) results PROFILE=smoke

# nbval re-executes copies of the executed smoke notebooks (the results stay untouched).
nbval: smoke
	$(BIN)/python workflow/scripts/nbval_copies.py results/smoke .cache/nbval
	cd .cache/nbval && ../../$(BIN)/python -m pytest --nbval-lax -q -p no:cacheprovider .

book-smoke: smoke
	$(BIN)/jupyter-book build . -W -n --keep-going

bench: install
	$(BIN)/python benchmarks/bench_foundation.py
	$(BIN)/python benchmarks/bench_preprocess.py
	$(BIN)/python benchmarks/bench_predict.py

clean:
	rm -rf _build book/generated .cache/nbval
