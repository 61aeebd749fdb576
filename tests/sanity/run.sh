#!/usr/bin/env bash
# Run `ansible-test sanity` against a clean copy of the collection.
#
# Usage: tests/sanity/run.sh [extra ansible-test sanity options]
#   e.g. tests/sanity/run.sh --test pylint
#
# ansible-test is taken from PATH (the Makefile puts .venv/bin first).
# ansible-test only runs from ansible_collections/<namespace>/<name>/, so the
# tracked and untracked-but-not-ignored files are copied (without .git) to
# build/sanity/ansible_collections/nixcache/closure/ and tested there, in a
# throwaway git repository of their own.
#
# HOME points to build/sanity-home so the per-test virtualenvs and the pip
# bootstrap cache stay inside the repository's build/ directory. The pip
# bootstrap script ansible-test would download is replaced by
# tests/sanity/get_pip_stub.py, so only the Python package index is needed.
#
# Environment:
#   SANITY_PYTHON  Python version to test with (default: 3.11)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
namespace=nixcache
collection=closure
python_version=${SANITY_PYTHON:-3.11}

build_dir="${repo_root}/build"
collection_dir="${build_dir}/sanity/ansible_collections/${namespace}/${collection}"
sanity_home="${build_dir}/sanity-home"

ansible_test=$(command -v ansible-test) || {
    echo "run.sh: ansible-test not found on PATH" >&2
    exit 2
}

# The Python that runs ansible-test also knows which pip release ansible-test
# bootstraps into its virtualenvs; the cached script name depends on it.
ansible_test_python="$(dirname "${ansible_test}")/python"
if [[ ! -x ${ansible_test_python} ]]; then
    ansible_test_python=python3
fi
pip_version=$(
    "${ansible_test_python}" - <<'EOF'
import os
import re

import ansible_test

path = os.path.join(os.path.dirname(ansible_test.__file__), '_internal', 'python_requirements.py')
with open(path, encoding='utf-8') as source:
    match = re.search(r"^\s*pip='([0-9][0-9.]*)',", source.read(), re.MULTILINE)
if not match:
    raise SystemExit('cannot find the pip version ansible-test bootstraps in ' + path)
print(match.group(1))
EOF
)

# Fresh copy of the working tree (tracked + untracked files not ignored).
rm -rf "${build_dir}/sanity"
mkdir -p "${collection_dir}"
(
    cd "${repo_root}"
    git ls-files --cached --others --exclude-standard -z \
        | while IFS= read -r -d '' path; do
            # Skip tracked files deleted in the working tree.
            if [[ -e ${path} || -L ${path} ]]; then
                printf '%s\0' "${path}"
            fi
        done \
        | tar --create --null --no-recursion --files-from=- \
        | tar --extract --directory="${collection_dir}"
)

mkdir -p "${sanity_home}/.ansible/test/cache"
cp "${repo_root}/tests/sanity/get_pip_stub.py" \
    "${sanity_home}/.ansible/test/cache/get_pip_${pip_version//./_}.py"

cd "${collection_dir}"
# build/ is ignored by the repository's .gitignore, so ansible-test (which lists files with
# git) would see no targets here: give the copy a repository of its own.
git init -q .
git add -A
export HOME="${sanity_home}"
export ANSIBLE_COLLECTIONS_PATH="${build_dir}/sanity"
# Results and bytecode must not leak back into the source tree.
export PYTHONDONTWRITEBYTECODE=1

echo "sanity: $("${ansible_test}" --version) on Python ${python_version}"
status=0
"${ansible_test}" sanity --python "${python_version}" --color no "$@" || status=$?
exit "${status}"
