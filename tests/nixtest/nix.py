"""Real Nix (Debian's nix-bin, 2.8, single-user as root): build fixtures, write and sign
binary caches, and judge stores written under an alternate root.

Every command runs with ``NIX_CONFIG`` enabling the ``nix`` command, with no
substituters (nothing waits on a network that is not there), no sandbox and no build
users (builds run as root and read the machine's files).

An *alternate root* ``ROOT`` holds a store at ``ROOT/nix/store`` and its database at
``ROOT/nix/var/nix/db``; Nix opens it with ``--store ROOT``.  ``root=None`` means the
machine's own store.
"""
import json
import os
import shutil
import sqlite3
import subprocess

from . import FIXTURES_DIR

# Also independent of /etc/nix/nix.conf: Debian's nix-bin without nix-setup-systemd has
# no config file, no nixbld users and would sandbox builds away from /bin/sh.
NIX_CONFIG = '\n'.join((
    'experimental-features = nix-command',
    'substituters =',
    'sandbox = false',
    'build-users-group =',
)) + '\n'
COMPRESSIONS = ('xz', 'zstd', 'bzip2', 'none')
NAR_EXTENSIONS = {'xz': '.nar.xz', 'zstd': '.nar.zst', 'bzip2': '.nar.bz2', 'none': '.nar',
                  'gzip': '.nar.gz', 'br': '.nar.br'}

# What `nix-store --verify` prints when all is well; any other line is a complaint.
_VERIFY_PROGRESS = frozenset((
    'reading the Nix store...',
    'checking path existence...',
    'checking link hashes...',
    'checking store hashes...',
))


class NixMissing(RuntimeError):
    """Nix is not installed on this machine."""


class NixError(RuntimeError):
    """A Nix command failed; carries the command and its output."""

    def __init__(self, message, cmd=None, returncode=None, stdout='', stderr=''):
        self.cmd = cmd
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        if cmd is not None:
            message = '%s\ncommand: %s\nexit code: %s\nstderr:\n%s' % (
                message, ' '.join(cmd), returncode, stderr.strip())
        super().__init__(message)


class StoreCorrupt(NixError):
    """`nix-store --verify --check-contents` found something wrong; see ``complaints``."""

    def __init__(self, root, complaints, returncode, stderr):
        self.root = root
        self.complaints = complaints
        super().__init__('store under %s does not verify:\n  %s' % (root, '\n  '.join(complaints)),
                         returncode=returncode, stderr=stderr)


def require():
    """Fail with a useful message when Nix is missing."""
    missing = [tool for tool in ('nix-build', 'nix-store', 'nix') if shutil.which(tool) is None]
    if missing:
        raise NixMissing('%s not found on PATH: run `make deps` (installs Debian\'s nix-bin)'
                         % ', '.join(missing))


def env(extra=None):
    """The environment for a Nix command."""
    result = dict(os.environ)
    result['NIX_CONFIG'] = NIX_CONFIG
    result.update(extra or {})
    return result


def run(args, check=True, input=None, extra_env=None, text=True):
    """Run a Nix command; raise NixError when it fails and ``check`` is true."""
    require()
    proc = subprocess.run(args, input=input, capture_output=True, text=text,
                          env=env(extra_env), check=False)
    if check and proc.returncode != 0:
        stderr = proc.stderr if text else proc.stderr.decode('utf-8', 'replace')
        raise NixError('Nix command failed', cmd=list(args), returncode=proc.returncode,
                       stderr=stderr)
    return proc


def _store_args(root):
    """``--store`` for an alternate root or a store URL; nothing for the machine's store."""
    if root is None:
        return []
    root = str(root)
    return ['--store', root if '://' in root else os.path.abspath(root)]


def fixture_file(name):
    """``small.nix`` -> ``tests/fixtures/small.nix``; paths that exist are kept as given."""
    if os.path.exists(name):
        return os.path.abspath(name)
    return os.path.join(FIXTURES_DIR, name)


def build(expr_file, args=None, attr=None):
    """``nix-build --no-out-link`` ``expr_file`` and return its out paths.

    ``args`` maps argument names to values: strings go as ``--argstr``, booleans and
    integers as ``--arg``.
    """
    cmd = ['nix-build', '--no-out-link', fixture_file(str(expr_file))]
    if attr:
        cmd += ['-A', attr]
    for name, value in sorted((args or {}).items()):
        if isinstance(value, bool):
            cmd += ['--arg', name, 'true' if value else 'false']
        elif isinstance(value, int):
            cmd += ['--arg', name, str(value)]
        else:
            cmd += ['--argstr', name, str(value)]
    out = run(cmd).stdout
    return [line for line in out.splitlines() if line.startswith('/')]


def closure(paths, root=None):
    """The closure of ``paths`` (``nix-store -qR``), sorted."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    out = run(['nix-store'] + _store_args(root) + ['-qR'] + paths).stdout
    return sorted(set(out.split()))


def references(path, root=None):
    """The direct references of one path, sorted."""
    out = run(['nix-store'] + _store_args(root) + ['-q', '--references', path]).stdout
    return sorted(set(out.split()))


def generate_key(name, directory):
    """Generate a signing key pair named ``name`` in ``directory``.

    Returns ``(secret_key_file, public_key_string)``; the public key is also written to
    ``NAME.pub``.
    """
    os.makedirs(directory, exist_ok=True)
    secret = os.path.join(directory, name + '.sec')
    public = os.path.join(directory, name + '.pub')
    for path in (secret, public):
        if os.path.exists(path):
            os.unlink(path)
    run(['nix-store', '--generate-binary-cache-key', name, secret, public])
    os.chmod(secret, 0o600)
    with open(public) as f:
        return secret, f.read().strip()


def sign(paths, secret_key_file, store=None, recursive=True):
    """Sign ``paths`` (and their closures) with ``nix store sign``.

    ``store`` is where the signatures are added: a cache URL (``file:///dir``), an
    alternate root, or None for the machine's store.  Prefer signing a cache: signatures
    added to the machine's store are copied into every cache written afterwards.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    cmd = ['nix', 'store', 'sign', '--key-file', str(secret_key_file)]
    if store is not None:
        cmd += ['--store', store if '://' in str(store) else os.path.abspath(str(store))]
    if recursive:
        cmd.append('-r')
    run(cmd + paths)


def write_cache_info(directory, priority=40, want_mass_query=True, store_dir='/nix/store'):
    """Write ``nix-cache-info`` as real caches have it (Nix itself writes only StoreDir)."""
    with open(os.path.join(directory, 'nix-cache-info'), 'w') as f:
        f.write('StoreDir: %s\n' % store_dir)
        f.write('WantMassQuery: %d\n' % (1 if want_mass_query else 0))
        f.write('Priority: %d\n' % priority)


def make_file_cache(directory, paths, compression='xz', secret_key_file=None, priority=40,
                    params=None):
    """Write the closures of ``paths`` to a ``file://`` binary cache in ``directory``.

    ``compression`` is one of xz, zstd, bzip2, none (Nix also knows gzip and br).  With
    ``secret_key_file`` every narinfo written is signed.  Returns the cache URL.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    directory = os.path.abspath(str(directory))
    os.makedirs(directory, exist_ok=True)
    query = {'compression': compression}
    if secret_key_file:
        query['secret-key'] = os.path.abspath(str(secret_key_file))
    query.update(params or {})
    url = 'file://%s?%s' % (directory, '&'.join('%s=%s' % kv for kv in sorted(query.items())))
    copy(paths, to=url)
    write_cache_info(directory, priority=priority)
    return 'file://' + directory


def copy(paths, to=None, from_=None, check_sigs=False, extra_args=()):
    """``nix copy`` between stores (URLs or alternate roots)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    cmd = ['nix', 'copy']
    if not check_sigs:
        cmd.append('--no-check-sigs')
    if from_ is not None:
        cmd += ['--from', from_ if '://' in str(from_) else os.path.abspath(str(from_))]
    if to is not None:
        cmd += ['--to', to if '://' in str(to) else os.path.abspath(str(to))]
    run(cmd + list(extra_args) + paths)


def copy_to_root(paths, root):
    """Make the closures of ``paths`` valid in the store under the alternate root ``root``."""
    copy(paths, to=os.path.abspath(str(root)))


def verify_store(root, check_contents=True, raise_on_error=True):
    """Judge a store with ``nix-store --verify [--check-contents]``.

    Returns the complaints (every line beyond Nix's progress messages: "path ... was
    modified!", "... disappeared ...", "... is not valid", errors and warnings).  Raises
    StoreCorrupt when there are complaints or the exit code is not 0, unless
    ``raise_on_error`` is false.

    Beware: Nix drops a path that disappeared and has no referrers from the database
    while it reports it, so a second verification of the same root may be silent.
    """
    cmd = ['nix-store'] + _store_args(root) + ['--verify']
    if check_contents:
        cmd.append('--check-contents')
    proc = run(cmd, check=False)
    complaints = [line for line in proc.stderr.splitlines()
                  if line.strip() and line.strip() not in _VERIFY_PROGRESS]
    if raise_on_error and (complaints or proc.returncode != 0):
        raise StoreCorrupt(root, complaints or ['exit code %d' % proc.returncode],
                           proc.returncode, proc.stderr)
    return complaints


def verify_cache(store_url, paths, trusted_keys, recursive=True, raise_on_error=True):
    """``nix store verify`` against a cache: every path's NAR must match its NarHash and
    carry a signature by one of ``trusted_keys``.  Returns the complaints ("path ... is
    untrusted", hash mismatches); raises NixError on any unless ``raise_on_error`` is false.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    trusted_keys = [trusted_keys] if isinstance(trusted_keys, str) else list(trusted_keys)
    cmd = ['nix', 'store', 'verify', '--store', store_url,
           '--trusted-public-keys', ' '.join(trusted_keys)]
    if recursive:
        cmd.append('-r')
    proc = run(cmd + paths, check=False)
    complaints = [line for line in proc.stderr.splitlines()
                  if line.strip() and not line.startswith('checking ')]
    if raise_on_error and (complaints or proc.returncode != 0):
        raise NixError('cache %s does not verify: %s' % (store_url, '; '.join(complaints)),
                       cmd=cmd, returncode=proc.returncode, stderr=proc.stderr)
    return complaints


def path_info(root, paths, recursive=True):
    """``nix path-info --json [-r]`` against a store (an alternate root, a store URL such
    as a cache, or None for the machine's store): a dict of full store path -> info.

    Info keys (Nix 2.8): path, narHash (SRI), narSize, references (full paths),
    deriver, registrationTime, signatures (when any), ultimate, ca.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    cmd = ['nix'] + _store_args(root) + ['path-info', '--json']
    if recursive:
        cmd.append('-r')
    infos = json.loads(run(cmd + paths).stdout)
    return {info['path']: info for info in infos}


def db_path(root=None):
    return os.path.join(str(root or '/'), 'nix', 'var', 'nix', 'db', 'db.sqlite')


def valid_paths(root=None):
    """The paths registered as valid in the store database under ``root``."""
    path = db_path(root)
    if not os.path.exists(path):
        return set()
    conn = sqlite3.connect('file:%s?mode=ro' % path, uri=True)
    try:
        return {row[0] for row in conn.execute('SELECT path FROM ValidPaths')}
    finally:
        conn.close()


def store_entries(root=None):
    """Names of the entries in ``ROOT/nix/store`` (``.links`` left out)."""
    store = os.path.join(str(root or '/'), 'nix', 'store')
    if not os.path.isdir(store):
        return []
    return sorted(name for name in os.listdir(store) if name != '.links')


def unregistered_entries(root=None):
    """Entries in the store that the database does not know: leftovers such as
    half-unpacked directories, temporary names and ``.lock`` files."""
    valid = {os.path.basename(p) for p in valid_paths(root)}
    return [name for name in store_entries(root) if name not in valid]


def nar_hash(path):
    """The NAR hash of a file system path as ``sha256:<base32>`` (``nix-hash``)."""
    out = run(['nix-hash', '--type', 'sha256', '--base32', str(path)]).stdout.strip()
    return 'sha256:' + out


def dump(path):
    """The NAR serialisation of a file system path (``nix-store --dump``) as bytes."""
    return run(['nix-store', '--dump', str(path)], text=False).stdout


def in_namespace(root, script, env=None):
    """Run ``script`` (sh) in a private mount namespace where ``ROOT/nix`` is mounted over
    ``/nix``, with a scrubbed environment (``env -i`` plus ``env``): there the store, its
    database and the profiles are the ones under ``root``, as on a host that has them at
    /nix, and nothing of the machine's own store can be reached.  Returns the
    CompletedProcess; needs root and ``unshare``."""
    wrapped = 'set -eu; mount --bind "$1/nix" /nix; shift; ' + script
    variables = dict({'PATH': '/usr/bin:/bin'}, **(env or {}))
    cmd = (['env', '-i'] + ['%s=%s' % kv for kv in sorted(variables.items())]
           + ['unshare', '--mount', '--propagation', 'private',
              '/bin/sh', '-c', wrapped, 'sh', str(root)])
    return subprocess.run(cmd, capture_output=True, text=True, check=False)
