#!/usr/bin/env bash
# Build the collection's docs site with antsibull-docs and Sphinx, warnings as errors.
#
# Usage: tests/release/build-docs.sh [DEST]      (default: build/docs; `make docs`)
#   DEST/site/build/html/index.html is the site's front page.
#
# antsibull-docs, sphinx-build and ansible-doc come from PATH (the Makefile puts .venv/bin
# first).  The site is made from the collection as ansible-doc sees it (the repository under
# ansible_collections/nixcache/closure), with the guides of docs/docsite/ (written from the
# README by tests/release/docs_pages.py).  It builds offline: intersphinx reads a local
# inventory of the few labels of the Ansible docs that the generated pages refer to (the links
# still go to the Ansible docs), so nothing is fetched.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dest=$(realpath -m "${1:-${repo_root}/build/docs}")
tree="${dest}/collections"

rm -rf "${dest}"
mkdir -p "${tree}/ansible_collections/nixcache" "${dest}/site"
ln -s "${repo_root}" "${tree}/ansible_collections/nixcache/closure"
export ANSIBLE_COLLECTIONS_PATH="${tree}"

version=$(sed -n 's/^version: *//p' "${repo_root}/galaxy.yml")
antsibull-docs sphinx-init --use-current --squash-hierarchy --fail-on-error \
    --project nixcache.closure --copyright 'nixcache.closure contributors' \
    --title "nixcache.closure ${version}" --html-short-title nixcache.closure \
    --no-add-antsibull-docs-version \
    --dest-dir "${dest}/site" nixcache.closure >/dev/null

python3 "${repo_root}/tests/release/offline_intersphinx.py" "${dest}/site"

cd "${dest}/site"
bash ./build.sh >"${dest}/build.log" 2>&1 || {
    cat "${dest}/build.log" >&2
    echo "build-docs: the docs site did not build (log: ${dest}/build.log)" >&2
    exit 1
}
echo "docs: ${dest}/site/build/html/index.html"
