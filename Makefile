# Two entry points: `make run` (the quick benchmark) and `make test`. Each builds .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV = $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python $(shell $(PY) tools/pip_sources.py)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: run test test-faults venv data browser bench clean

$(BIN)/genbench: pyproject.toml testing/toy_family/pyproject.toml tools/pip_sources.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# uv, from the sources pip is configured with (tools/pip_sources.py): on 2 cores it installs
	# all this, bytecode included, in ~1.5 min where pip took 3.6 (2026-12-07). Bytecode: where
	# PYTHONDONTWRITEBYTECODE is set (this machine), without it every Ray worker process would
	# compile torch, Ray and MLflow from source at each start (18 s per import instead of 8)
	$(BIN)/pip install -q uv
	# torch first, pinned, from the first source that has it: on this machine, local disk
	$(UV) --index-strategy unsafe-first-match torch==2.14.1
	# the rest as pip picks it (the newest release across the sources); the toy model family of
	# tests/test_toy_family.py, installed as users install a family
	$(UV) --index-strategy unsafe-best-match torchvision==0.29.1 -e '.[test,tune]' \
		-e testing/toy_family
	# PYTHONDONTWRITEBYTECODE machines: genbench's own modules compiled once, not in every
	# Ray worker process at every start
	$(BIN)/python -m compileall -q pipeline eval tune report genbench
	touch $(BIN)/genbench

venv: $(BIN)/genbench

# Fashion-MNIST from Debian's package, when apt is there and the data is not.
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || \
		echo "note: could not install dataset-fashion-mnist; torchvision will download it when online"; \
	fi

# Headless Chromium (Debian's chromium + chromium-driver) for the report's browser test. A
# developer without it gets a note and a skipped test; CI (CI=true) fails: it must run that test.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver) >/dev/null || \
		echo "note: could not install chromium; the report's browser test will be skipped"; \
	fi
	@if [ "$$CI" = "true" ] && ! command -v chromium >/dev/null 2>&1; then \
		echo "error: chromium is missing and CI must run the report's browser test" >&2; \
		exit 1; \
	fi

run: venv data
	$(BIN)/genbench bench --preset quick

# The suite without the fault-injection and 2-node cluster tests (marked `fault`)
test: venv data browser
	$(BIN)/python -m pytest -m "not fault"

# Those tests: they mostly wait (a 90 s tracking outage, a node lost for 45 s, collective
# timeouts), so 3 xdist workers share the 2 cores. CI runs both targets.
test-faults: venv data
	$(BIN)/python -m pytest -m fault -n 3

bench: venv data
	$(BIN)/python -m benchmarks.train_throughput

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts ray_results reports bench_out
