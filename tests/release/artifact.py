"""Build the collection artifact reproducibly.

    artifact.py [--output DIR] [--ref REF]     (`make build`: build/dist/)

``ansible-galaxy collection build`` writes the same files with the same contents every time,
but not the same bytes: the gzip header and the MANIFEST.json and FILES.json members carry the
time of the build, the other members the modification times of the checkout, and members and
FILES.json come in the order the file system lists the directories.  This builds REF (default
HEAD, as committed: a clean export, so nothing untracked slips in) with ansible-galaxy, then
rewrites the tarball with its members sorted, every time set to the commit's time
(SOURCE_DATE_EPOCH, when set, wins), owners cleared, FILES.json sorted (and its checksum in
MANIFEST.json updated) and a gzip header without time or name.  The same commit gives the same
bytes on every machine with the same zlib, and ``ansible-galaxy collection install`` checks
the result as it checks any artifact.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFESTS = ('MANIFEST.json', 'FILES.json')


def members(path):
    """name -> (TarInfo, bytes or None) of a collection tarball, in its order."""
    found = {}
    with tarfile.open(path, 'r:gz') as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info).read() if info.isfile() else None
            found[info.name] = (info, data)
    return found


def content(path):
    """What a tarball holds, without times or order: name -> (type, mode, link, sha256)."""
    return {name: (info.type, info.mode, info.linkname,
                   hashlib.sha256(data).hexdigest() if data is not None else None)
            for name, (info, data) in members(path).items()}


def normalise(path, epoch):
    found = members(path)
    files = json.loads(found['FILES.json'][1])
    files['files'].sort(key=lambda entry: (entry['name'] != '.', entry['name']))
    files_json = json.dumps(files, indent=True).encode('utf-8')
    manifest = json.loads(found['MANIFEST.json'][1])
    manifest['file_manifest_file']['chksum_sha256'] = hashlib.sha256(files_json).hexdigest()
    manifest_json = json.dumps(manifest, indent=True).encode('utf-8')
    replaced = {'MANIFEST.json': manifest_json, 'FILES.json': files_json}
    order = list(MANIFESTS) + sorted(name for name in found if name not in MANIFESTS)
    with open(path + '.tmp', 'wb') as raw:
        with gzip.GzipFile(filename='', mode='wb', fileobj=raw, mtime=0) as compressed:
            with tarfile.open(fileobj=compressed, mode='w', format=tarfile.GNU_FORMAT) as tar:
                for name in order:
                    info, data = found[name]
                    data = replaced.get(name, data)
                    info.mtime = epoch
                    info.uid = info.gid = 0
                    info.uname = info.gname = ''
                    info.pax_headers = {}
                    if data is not None:
                        info.size = len(data)
                    tar.addfile(info, io.BytesIO(data) if data is not None else None)
    os.replace(path + '.tmp', path)


def build(output, ref='HEAD', repo=REPO):
    """Build ``ref`` of ``repo`` into ``output``; the path of the normalised tarball."""
    commit = subprocess.run(['git', '-C', repo, 'rev-parse', '--verify', ref + '^{commit}'],
                            check=True, stdout=subprocess.PIPE,
                            universal_newlines=True).stdout.strip()
    epoch = os.environ.get('SOURCE_DATE_EPOCH') or subprocess.run(
        ['git', '-C', repo, 'log', '-1', '--format=%ct', commit], check=True,
        stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    galaxy = os.path.join(os.path.dirname(sys.executable), 'ansible-galaxy')
    os.makedirs(output, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='artifact-') as scratch:
        source = os.path.join(scratch, 'source')
        os.mkdir(source)
        archive = subprocess.run(['git', '-C', repo, 'archive', commit], check=True,
                                 stdout=subprocess.PIPE).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(source)
        built = os.path.join(scratch, 'dist')
        subprocess.run([galaxy if os.path.exists(galaxy) else 'ansible-galaxy', 'collection',
                        'build', '--output-path', built, source],
                       check=True, stdout=subprocess.DEVNULL)
        (name,) = os.listdir(built)
        normalise(os.path.join(built, name), int(epoch))
        target = os.path.join(output, name)
        os.replace(os.path.join(built, name), target)
    return target, commit


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--output', default=os.path.join(REPO, 'build', 'dist'))
    parser.add_argument('--ref', default='HEAD')
    args = parser.parse_args()
    path, commit = build(args.output, args.ref)
    with open(path, 'rb') as stream:
        digest = hashlib.sha256(stream.read()).hexdigest()
    print('%s  %s (commit %s)' % (digest, os.path.relpath(path), commit[:12]))
    dirty = subprocess.run(['git', '-C', REPO, 'status', '--porcelain', '--untracked-files=no'],
                           check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    if dirty and args.ref == 'HEAD':
        print('artifact: built the commit; uncommitted changes are not in it', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
