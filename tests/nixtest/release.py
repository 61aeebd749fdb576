"""Helpers of the release suite (tests/release/): its tools as modules, commands with the
virtualenv's tools, clean copies of the repository."""
import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(REPO, 'tests', 'release')
VENV_BIN = os.path.dirname(sys.executable)


def tool(name):
    """tests/release/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location('release_' + name, os.path.join(HERE, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(command, **kwargs):
    """Run a command with the test virtualenv's tools first on PATH; its CompletedProcess."""
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ['PATH'], ANSIBLE_NOCOLOR='1')
    env.update(kwargs.pop('env', {}))
    check = kwargs.pop('check', False)
    return subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=check, **kwargs)


def working_copy(dest):
    """The repository's files as they are now (tracked and untracked, not ignored), in a git
    repository of their own at ``dest``."""
    listed = subprocess.run(['git', '-C', REPO, 'ls-files', '--cached', '--others',
                             '--exclude-standard', '-z'], check=True,
                            stdout=subprocess.PIPE).stdout.decode().split('\0')
    files = [path for path in listed if path and os.path.lexists(os.path.join(REPO, path))]
    os.makedirs(dest)
    pack = subprocess.run(['tar', '-C', REPO, '--null', '--no-recursion', '-T', '-', '-c'],
                          input='\0'.join(files).encode(), check=True, stdout=subprocess.PIPE).stdout
    subprocess.run(['tar', '-C', dest, '-x'], input=pack, check=True)
    for command in (['init', '-q'], ['add', '-A'],
                    ['-c', 'user.name=test', '-c', 'user.email=test@example.org',
                     'commit', '-q', '-m', 'copy']):
        subprocess.run(['git', '-C', dest] + command, check=True)
    return dest
