# The package: host tests against the simulator under numpy 1.26 and numpy 2.x,
# ruff + mypy --strict, the benchmark, and the seed example on the simulator.
PKG := python-pynq-alloc
NUMPY_np1 := numpy==1.26.*
NUMPY_np2 := numpy>=2,<3
APT_PACKAGES += python3 python3-venv strace

TEST_TARGETS += lint test-python test-packaging
.PHONY: test-python test-python-np1 test-python-np2 test-packaging lint bench run-sim

# One venv per numpy major; remade when the package metadata or the tool list changes.
$(VENV)/np%/.stamp: $(PKG)/pyproject.toml tests/python/requirements.txt | deps
	rm -rf $(VENV)/np$*
	$(PYTHON) -m venv $(VENV)/np$*
	$(VENV)/np$*/bin/pip install -q --upgrade pip
	$(VENV)/np$*/bin/pip install -q "$(NUMPY_np$*)" -r tests/python/requirements.txt -e $(PKG)
	touch $@

# (explicit rules: make skips pattern rules for .PHONY targets)
# The stateful test runs 10,000 random sequences under numpy 2 and 1,000 under 1.26.
# A test that hangs fails after 300 s (pytest-timeout; the stateful test has 1800 s).
HOST_PYTEST = @echo "== host tests, $$($(1)/bin/python -c 'import numpy; print("numpy", numpy.__version__)')" && \
	PYNQ_ALLOC_STATEFUL_EXAMPLES=$(2) $(1)/bin/python -m pytest -q -p no:cacheprovider --timeout=300 tests/python
test-python-np1: $(VENV)/np1/.stamp
	$(call HOST_PYTEST,$(VENV)/np1,1000)
test-python-np2: $(VENV)/np2/.stamp
	$(call HOST_PYTEST,$(VENV)/np2,10000)

test-python: test-python-np1 test-python-np2

# Wheel and sdist built with the newest backend from PyPI and with the versions the Yocto
# series ship: licence metadata, contents, no warning (network: PyPI).
test-packaging: $(VENV)/np2/.stamp
	$(VENV)/np2/bin/python -m pytest -q -p no:cacheprovider tests/packaging

# mypy --strict against both numpy versions' type stubs (they differ: 1.26 types
# ndarray[Any, Any], 2.x the shape too)
lint: $(VENV)/np2/.stamp $(VENV)/np1/.stamp
	$(VENV)/np2/bin/ruff check --config $(PKG)/pyproject.toml $(PKG)/src tests/python tests/packaging tests/bench
	cd $(PKG) && ../$(VENV)/np2/bin/mypy --strict src/pynq_alloc
	cd $(PKG) && ../$(VENV)/np1/bin/mypy --strict src/pynq_alloc

bench: $(VENV)/np2/.stamp
	$(VENV)/np2/bin/python tests/bench/bench_allocate.py
	$(VENV)/np2/bin/python tests/bench/soak.py

# The seed example on the simulator, without QEMU: a venv with numpy and the package
# only (no test tools), and the output labelled, since the address is made up.
$(VENV)/sim/.stamp: $(PKG)/pyproject.toml | deps
	rm -rf $(VENV)/sim
	$(PYTHON) -m venv $(VENV)/sim
	$(VENV)/sim/bin/pip install -q "$(NUMPY_np2)" -e $(PKG)
	touch $@

run-sim: $(VENV)/sim/.stamp
	@echo "make run-sim: the seed example on the simulator of the driver (PYNQ_ALLOC_BACKEND=sim): no QEMU, no hardware"
	@out=$$(PYNQ_ALLOC_BACKEND=sim $(VENV)/sim/bin/python examples/seed.py) && \
		echo "$$out   [SIMULATED: the simulator makes the address up]"

# Mutation testing of the code that decides addresses, sync ranges and commands, pool
# placement and ledger ownership (scope and test order: tests/python/mutmut_config.py).
# Slow (every mutant runs its module's host test files until the first failure), so not
# part of `make test`: run it whenever those modules change. mutmut edits the files in
# place and puts each back; its results stay in .mutmut-cache (`mutmut show <id>`, not
# while a run is going). The runner's test list (MUTATE_BASELINE) is only the run mutmut
# times (a mutant running ten times as long is a timeout): test_ledger.py, about half of
# the longest module list (ledger.py's), so that a machine whose load goes up during the
# run does not turn a slow survivor into a timeout; each mutant runs its own list. The
# runner (mutmut_config.py run) counts any failing exit, a crash included, as a kill.
MUTMUT_VENV := $(VENV)/mutmut
MUTATE_PATHS := $(PKG)/src/pynq_alloc/ledger.py,$(PKG)/src/pynq_alloc/pool.py,$(PKG)/src/pynq_alloc/buffer.py,$(PKG)/src/pynq_alloc/backends/udmabuf.py,$(PKG)/src/pynq_alloc/allocate.py
MUTATE_EXAMPLES ?= 50
MUTATE_SHARD ?=
# MUTATE_KEEP=1 continues from .mutmut-cache: mutmut keeps the mutants it killed and, when
# the tests changed since, tries every other one again (survivors, timeouts, untried).
MUTATE_KEEP ?=
MUTATE_BASELINE ?= tests/python/test_ledger.py
.PHONY: mutate
$(MUTMUT_VENV)/.stamp: tests/python/requirements-mutmut.txt tests/python/requirements.txt $(PKG)/pyproject.toml | deps
	rm -rf $(MUTMUT_VENV)
	$(PYTHON) -m venv $(MUTMUT_VENV)
	$(MUTMUT_VENV)/bin/pip install -q --upgrade pip
	$(MUTMUT_VENV)/bin/pip install -q -r tests/python/requirements-mutmut.txt -e $(PKG)
	touch $@

# The pytest command every mutant runs (mutmut_config.py appends its module's test files).
MUTATE_PYTEST = env PYNQ_ALLOC_STATEFUL_EXAMPLES=$(MUTATE_EXAMPLES) $(abspath $(MUTMUT_VENV))/bin/python -m pytest -x -q -p no:cacheprovider --hypothesis-profile=mutate --basetemp $(abspath $(BUILD))/mutate-tmp
# Order: the baseline (every test file the chosen modules' mutants run, on the unmutated
# package: a red one would "kill" every mutant) stops the run when red, before the last
# run's cache is removed; mutmut then exits non-zero only on a fatal error (--CI:
# survivors are the score's business, not a failure), and the score fails the target
# when no mutant was tried.
mutate: $(MUTMUT_VENV)/.stamp
	mkdir -p $(BUILD)
	MUTATE_BASELINE="$(MUTATE_BASELINE)" PYTHONPATH=tests/python $(MUTMUT_VENV)/bin/python tests/python/mutmut_config.py baseline "$(MUTATE_PATHS)" $(MUTATE_PYTEST)
	$(if $(MUTATE_KEEP),,rm -f .mutmut-cache)
	MUTATE_SHARD=$(MUTATE_SHARD) PYTHONPATH=tests/python $(MUTMUT_VENV)/bin/mutmut run --paths-to-mutate $(MUTATE_PATHS) \
		--tests-dir tests/python --simple-output --no-progress --CI \
		--runner "$(abspath $(MUTMUT_VENV))/bin/python tests/python/mutmut_config.py run $(MUTATE_PYTEST) $(MUTATE_BASELINE)"
	@PYTHONPATH=tests/python $(MUTMUT_VENV)/bin/python tests/python/mutmut_config.py .mutmut-cache
