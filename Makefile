# yibao developer commands. `make setup` once, then `make test`, `make demo`.
# Everything runs from .venv; the local Kafka broker's jars, data and logs live in var/ (ignored).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
MVN ?= mvn
VENV := .venv
BIN := $(VENV)/bin
KAFKA_LIBS := var/kafka/libs
KAFKA_STAMP := $(KAFKA_LIBS)/.fetched
PYTEST_ARGS ?=

.PHONY: compile pure wheel-check help system-deps setup lock kafka-libs kafka-up kafka-down kafka-status test lint demo clean bench-settle bench-live bench-anchors bench-capacity smoke bench-replay chaos soak

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: system-deps $(VENV)/.installed $(KAFKA_STAMP) ## .venv + pinned deps + yibao (editable) + Kafka jars + chromium/wrk; idempotent
	@echo "setup done: $$($(BIN)/python --version), $$(ls $(KAFKA_LIBS)/kafka_2.13-*.jar | xargs -n1 basename)"

# Debian packages the tests and benchmarks drive: headless Chromium opens the reports, wrk is
# the HTTP load generator of make bench-gateway. Installed only when missing.
SYSTEM_TOOLS := chromium wrk
system-deps: ## apt-get install chromium and wrk when they are missing (root or sudo)
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  command -v apt-get >/dev/null || { echo "install$$missing with your package manager"; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $$missing; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalled only when the lock or pyproject.toml changes.
$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q --require-hashes -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	@touch $@

# Kafka 3.9 broker + runtime deps + slf4j binding, from Maven Central (cached in ~/.m2).
kafka-libs: $(KAFKA_STAMP) ## fetch the Kafka broker jars into var/kafka/libs
$(KAFKA_STAMP): kafka/pom.xml
	@command -v $(MVN) >/dev/null || { echo "Maven (mvn) is needed to fetch the Kafka jars: apt-get install maven, or use Docker (see README)"; exit 1; }
	rm -rf $(KAFKA_LIBS)
	$(MVN) -B -q -Dstyle.color=never -f kafka/pom.xml package
	@touch $@

lock: | $(BIN)/python ## re-pin requirements.lock from pyproject.toml (runtime + dev, with hashes)
	$(BIN)/pip install --disable-pip-version-check -q uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --universal --python-version 3.11 -o requirements.lock

kafka-up: ## start the local broker on 127.0.0.1:9092 (YIBAO_KAFKA_PORT); no-op if it runs
	$(BIN)/python -m yibao kafka up

kafka-down: ## stop it and wait until the port is free
	$(BIN)/python -m yibao kafka down

kafka-status: ## ask it for metadata; fails unless it answers
	$(BIN)/python -m yibao kafka status

test: ## ruff + mypy, then the whole test suite (Kafka tests start/stop a broker themselves)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

compile: ## mypyc-compile the rules core in place (yibao/rules/*.so); `yibao --version` says which runs
	$(BIN)/python tools/compile_core.py

pure: ## remove the compiled core: the same rules run as plain Python
	rm -f yibao/rules/*.so yibao/rules/compiled.sha256

lint: ## ruff check + mypy
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench-settle: ## settle a generated log of >= 1M events on one core: events/s, peak RSS, the decode-only ceiling
	$(BIN)/python bench/bench_settle.py

bench-live: ## live pipeline on the local broker: end-to-end events/s, raw ceiling, p50/p99 latency
	$(BIN)/python -m yibao kafka up
	$(BIN)/python bench/bench_live.py

bench-anchors: ## raw aiokafka, Quix (exactly-once), faust (tuned) beside bench-live on the same events: rates, yibao's ratios
	$(BIN)/python -m yibao kafka up
	$(BIN)/python bench/bench_anchors.py

demo: ## broker, worker and projector up; a generated month (10,000 households) published; reports + chart
	$(BIN)/yibao kafka up
	$(BIN)/yibao demo

smoke: ## start the local broker and run the faust smoke path end to end
	$(BIN)/yibao kafka up
	$(BIN)/yibao smoke

bench-gateway: ## HTTP gateway under wrk: visit flows at 200 checkouts/s offered; settle p50/p99, errors
	$(BIN)/python -m yibao kafka up
	$(BIN)/python bench/bench_gateway.py

bench-capacity: ## each stage alone on a backlog (sequencer, processor, tier-B audit): events/s, settlements a day
	$(BIN)/python -m yibao kafka up
	$(BIN)/python bench/bench_capacity.py

bench-replay: ## replay events/s into DuckDB beside the raw consume rate of the same topics
	$(BIN)/yibao kafka up
	$(BIN)/python bench/bench_replay.py

chaos: ## fault campaign on an own broker: worker/projector SIGKILLs, broker restart; prints a table
	$(BIN)/python bench/chaos.py

soak: ## 30 min at 2,000 events/s through worker + projector, RSS sampled (var/soak/<run>/)
	$(BIN)/python bench/soak.py

clean: kafka-down-quiet ## remove .venv and var/ (broker data, jars), caches
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis kafka/target

.PHONY: kafka-down-quiet
kafka-down-quiet:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m yibao kafka down || true; fi

wheel-check: ## build the wheel, install it in a fresh venv, show it makes `yibao` importable and nothing else
	bash .ci/wheel-check
