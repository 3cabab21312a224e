# Everything a fresh machine needs, from nothing: `make demo` and `make test`.
# Creates .venv, installs build and test dependencies, builds the extension in release mode.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(HOME)/.cargo/bin:$(PATH)

DEPS_STAMP  := $(VENV)/.deps-installed
BUILD_STAMP := $(VENV)/.extension-built
RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml pyproject.toml

.PHONY: demo test test-rust test-python build bench fuzz clean

demo: $(BUILD_STAMP)
	$(PY) -m margin_engine.cli demo $(DEMO_ARGS)

test: test-rust test-python

test-rust:
	cargo test -p margin-core --release

# pytest-xdist spreads the suite over the machine's cores (TEST_WORKERS=0: one process); worksteal
# keeps both busy though a few hypothesis tests take much longer than the rest.
TEST_WORKERS ?= auto
test-python: $(BUILD_STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

build: $(BUILD_STAMP)

# Benchmarks side by side with the baselines, then docs/performance.md from their JSON.
# BENCH_FULL=1 adds the 1,000,000-account book. BENCH_RUNS=3 runs the suite three times and merges
# the runs (each benchmark from its least disturbed run; the page shows every run's median).
BENCH_RUNS ?= 1
BENCH_JSONS = $(foreach i,$(shell seq $(BENCH_RUNS)),benches/results/bench-$(i).json)
bench: $(BUILD_STAMP)
	mkdir -p benches/results
	for json in $(BENCH_JSONS); do \
		$(PY) -m pytest benches -q -p no:cacheprovider --benchmark-only --benchmark-json=$$json $(BENCH_ARGS) || exit 1; \
	done
	$(PY) benches/report.py $(BENCH_JSONS) --memory benches/results/peak_memory.json --stream benches/results/stream_memory.json

# Fuzzes margin-core's kernels (fuzz/, a cargo-fuzz crate outside the workspace) for FUZZ_SECONDS.
# Not part of `make test`. `--sanitizer none` works on the stable toolchain; for AddressSanitizer
# run `cargo +nightly fuzz run kernels` in fuzz/. A crash leaves its input in fuzz/artifacts/kernels/.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	cd fuzz && cargo fuzz run --sanitizer none kernels -- -max_total_time=$(FUZZ_SECONDS) -max_len=1024 -len_control=0 -print_final_stats=1 $(FUZZ_ARGS)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.10,<2" "numpy>=1.24" "pyarrow>=15" "pytest>=8" "pytest-xdist>=3.5" "hypothesis>=6.100" \
		"pytest-benchmark>=4" "QuantLib>=1.30" "polars>=1.0" "duckdb>=1.0" "matplotlib>=3.7" "pandas>=2.0" "scipy>=1.9" "arch>=6" "tomli>=2; python_version<'3.11'"
	$(PY) -m pip install -q "pyspark>=4.0" "dask[dataframe]>=2024.12"  # tests/test_spark.py (needs Java 17+), tests/test_dask.py
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(RUST_SOURCES)
	rm -f python/margin_engine/_core.cpython-*.so  # a build from before abi3 would shadow _core.abi3.so
	$(VENV)/bin/maturin develop --release
	touch $@

clean:
	rm -rf $(VENV) target
