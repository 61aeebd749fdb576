"""The Pythons a managed host may have, and the ansible-core releases a controller may run.

Managed hosts: one CPython per minor version from 3.8 to 3.13, found as Debian's
``/usr/bin/python3.X`` or under pyenv (``$PYENV_ROOT/versions/3.X.*``), each wrapped in a
virtualenv without pip so that modules see its standard library only (no
``cryptography``, no ``zstandard``), as on a bare host.  Which of them exist depends on the
machine: the tests use those found and the run prints which ran.

Controllers: ``make controllers`` builds ``build/controllers/oldest`` (the oldest
ansible-core ``meta/runtime.yml`` claims) and ``build/controllers/newest`` (the newest
ansible-core that a Python on the machine supports).
"""
import glob
import os
import subprocess

from . import BUILD_DIR

MANAGED_HOST_VERSIONS = ((3, 8), (3, 9), (3, 10), (3, 11), (3, 12), (3, 13))
OPTIONAL_PACKAGES = ('cryptography', 'nacl', 'zstandard', 'boto3', 'brotli')
CONTROLLERS_DIR = os.path.join(BUILD_DIR, 'controllers')
CONTROLLERS = ('oldest', 'newest')

# What ran, for the summary at the end of the test run: label -> description.
RAN = {}


def version_of(python):
    try:
        out = subprocess.run([python, '-c', 'import sys; print("%d.%d.%d" % sys.version_info[:3])'],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return tuple(int(part) for part in out.split('.'))


def _candidates(minor):
    """Interpreters of one minor version, Debian's first."""
    name = 'python%d.%d' % minor
    yield os.path.join('/usr/bin', name)
    pyenv_root = os.environ.get('PYENV_ROOT') or os.path.expanduser('~/.pyenv')
    yield from sorted(glob.glob(os.path.join(pyenv_root, 'versions', '%d.%d.*' % minor, 'bin', name)),
                      reverse=True)


def managed_host_pythons():
    """``[(version, path)]``: one interpreter per supported minor version found here."""
    found = []
    for minor in MANAGED_HOST_VERSIONS:
        for path in _candidates(minor):
            if os.access(path, os.X_OK):
                version = version_of(path)
                if version and version[:2] == minor:
                    found.append((version, path))
                    break
    return found


def bare(version, python):
    """A virtualenv of ``python`` without pip or any package: its standard library only.

    Returns the path of its interpreter; raises RuntimeError when an optional package is
    importable there all the same."""
    directory = os.path.join(BUILD_DIR, 'interpreters', 'python%d.%d' % version[:2])
    interpreter = os.path.join(directory, 'bin', 'python')
    if version_of(interpreter) != version:
        subprocess.run([python, '-m', 'venv', '--clear', '--without-pip', directory],
                       check=True, capture_output=True, timeout=120)
    probe = ('import importlib.util as u; print(",".join(m for m in %r if u.find_spec(m)))'
             % (OPTIONAL_PACKAGES,))
    extra = subprocess.run([interpreter, '-c', probe], capture_output=True, text=True,
                           check=True, timeout=30).stdout.strip()
    if extra:
        raise RuntimeError('%s is not bare: it imports %s' % (interpreter, extra))
    return interpreter


def controller(name):
    """``(ansible-playbook path, ansible-core version)`` of a controller built by
    ``make controllers``, or None when it was not built."""
    playbook = os.path.join(CONTROLLERS_DIR, name, 'bin', 'ansible-playbook')
    python = os.path.join(CONTROLLERS_DIR, name, 'bin', 'python')
    if not os.path.exists(playbook):
        return None
    version = subprocess.run(
        [python, '-c', 'import ansible.release as r, sys; '
                       'print(r.__version__, "%d.%d.%d" % sys.version_info[:3])'],
        capture_output=True, text=True, check=True, timeout=60).stdout.split()
    return playbook, version[0], version[1]


def controller_playbook(name):
    """The ``ansible-playbook`` of controller ``name`` (None for ``default``, the test
    virtualenv's); a controller not built fails the test under NIXTEST_STRICT, else skips it."""
    if name == 'default':
        return None
    found = controller(name)
    if found is None:
        import pytest
        message = 'no %s controller: run `make controllers`' % name
        if os.environ.get('NIXTEST_STRICT'):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found[0]
