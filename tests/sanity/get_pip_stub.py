"""Offline stand-in for the pip bootstrap script that ansible-test downloads.

ansible-test creates each sanity virtualenv without pip and then runs a
``get-pip.py`` script fetched from a host that is not always reachable.
tests/sanity/run.sh copies this file to the cache path ansible-test looks
at first (``~/.ansible/test/cache/get_pip_<version>.py``), so the download
is skipped.

It seeds pip from the interpreter's bundled ``ensurepip`` wheel and then
lets that pip install the requested packages (the pinned pip release) from
the configured package index.  ``--no-setuptools`` and ``--no-wheel`` are
options of get-pip.py only, so they are dropped.
"""

from __future__ import annotations

import os
import subprocess
import sys

GET_PIP_ONLY_OPTIONS = frozenset(('--no-setuptools', '--no-wheel'))


def main() -> int:
    """Bootstrap pip into the running interpreter and install the arguments."""
    env = dict(os.environ)
    env.pop('PIP_CONFIG_FILE', None)

    subprocess.run(
        [sys.executable, '-m', 'ensurepip', '--default-pip'],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )

    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_OPTIONS]

    if not args:
        return 0

    return subprocess.run(
        [sys.executable, '-m', 'pip', 'install', *args],
        env=env,
        check=False,
    ).returncode


if __name__ == '__main__':
    sys.exit(main())
