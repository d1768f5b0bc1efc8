# Kiln's developer commands. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help build test lint run fmt deploy-check docker bench bench-quick bench-peers

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## Build every binary (debug)
	$(CARGO) build --workspace --bins

test: build ## Run the whole test suite (starts its own redis-server per test)
	$(CARGO) test --workspace --all-targets

run: build ## Start Redis, the api, the gateway and two workers under var/, run an example build live
	./scripts/run.sh

lint: ## Formatting and clippy, as CI runs them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

deploy-check: ## Validate the Dockerfile, compose file and Helm chart offline (fetches its tools into .tools/)
	bash deploy/check.sh

docker: ## Build the image (needs a Docker engine)
	docker build -f deploy/Dockerfile -t kiln:dev .

bench: ## Every benchmark figure at full size, against same-run baselines (release build)
	$(CARGO) build --release --bins
	target/release/kiln-bench

bench-quick: ## Every figure at reduced size (a few minutes after the build)
	$(CARGO) build --release --bins
	target/release/kiln-bench --quick

bench-peers: ## Install the peers make bench compares with (BullMQ, from npm)
	npm install --silent --prefix crates/bench/peers
