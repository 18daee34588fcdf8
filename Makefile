# The front door: make install · make run JOB=classify · make demo · make test · make docs · make bench · make lint
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
JOB ?= classify
# Optional: MODEL=gpt-4o-mini INPUT=path.jsonl RUN_ID=name ARGS="--concurrency 50"
RUN_FLAGS = $(if $(MODEL),--model $(MODEL)) $(if $(INPUT),--input $(INPUT)) $(if $(RUN_ID),--run-id $(RUN_ID)) $(ARGS)

.PHONY: install run nightly serve eval demo test docs bench lint format clean lock

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)  # never re-create over a venv: PATH may name another python3
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,ray,parquet,otel]'
	touch $@

run: install
	$(BIN)/runner run $(JOB) $(RUN_FLAGS)

# Accuracy and a confusion matrix of JOB (its model, or MODEL=...) on data/$(JOB)_eval.jsonl (gold `label`).
EVAL_RUN = eval-$(subst /,_,$(or $(MODEL),default))
eval: install
	-$(BIN)/runner run $(JOB) --input data/$(JOB)_eval.jsonl --run-id $(EVAL_RUN) $(if $(MODEL),--model $(MODEL)) $(ARGS)
	$(BIN)/python -c "from pathlib import Path; from runner.job.evaluate import evaluate; \
	print(evaluate(Path('runs/$(JOB)/$(EVAL_RUN)'), Path('data/$(JOB)_eval.jsonl')).report())"

# Cron's entry point: every *.jsonl in NIGHTLY_DIR whose run is not finished, oldest name first (a night that
# was killed resumes on the next fire; one still running is skipped with exit 75). See README, "Nightly runs".
NIGHTLY_DIR ?= data/in
nightly: install
	$(BIN)/runner run $(JOB) --input $(NIGHTLY_DIR) $(if $(MODEL),--model $(MODEL)) $(ARGS)

# The live web view of runs/ and the one-record try-out (ARGS="--port 9000", "--api-base URL", ...).
serve: install
	$(BIN)/runner serve $(ARGS)

# A real run of the classify job against the project's own OpenAI-compatible test server (no key needed).
demo: install
	$(BIN)/python -m tests.doubles.demo $(RUN_FLAGS)

test: install
	$(BIN)/python -m pytest -n 2 --dist worksteal

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or page fails it.
# tests/test_docs.py builds it too, so `make test` fails when it doesn't build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Benchmarks print ratios measured side by side; results are kept in bench/RESULTS.md.
bench: install
	$(BIN)/python -m bench $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-pin every dependency to what is installed now (run after changing pyproject.toml).
lock: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^runner' > constraints.txt

clean:
	rm -rf $(VENV) runs site
