#!/usr/bin/env bash
# Lint the plugin documentation as a docs site would render it:
# `antsibull-docs lint-collection-docs --plugin-docs`.
#
# antsibull-docs and ansible-doc are taken from PATH (the Makefile puts .venv/bin first).
# The collection must sit under ansible_collections/<namespace>/<name>/, so a link to the
# repository is made in build/lint/.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tree="${repo_root}/build/lint/ansible_collections/nixcache"

mkdir -p "${tree}"
ln -sfn "${repo_root}" "${tree}/closure"

antsibull-docs lint-collection-docs --plugin-docs "${tree}/closure"
