"""narinfo parsing, writing and the fingerprint, against a narinfo written by real Nix."""
import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidNarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath

from nixtest.vectors import FINGERPRINT, NARINFO


def test_parse_a_real_narinfo():
    info = NarInfo.parse(NARINFO)
    assert info.store_path == StorePath.parse(
        '/nix/store/pbwxn9xhigdm89rg5pl56h36qncc8nyr-small-env-1.0')
    assert info.url == 'nar/0lbp9jyg818km7p2rvy6msg0m8d996vx5m8879qr16azgycgrn4s.nar.xz'
    assert info.compression == 'xz'
    assert (info.file_size, info.nar_size) == (508, 2112)
    assert info.nar_hash == 'sha256:1j27zjmk1yvxg7fbsblplf3xmsggn89xmgy6n83hg59wihp24ybq'
    assert len(info.nar_digest) == 32
    assert [ref.name for ref in info.references] == [
        'small-link-1.0', 'small-tool-1.0', 'small-env-1.0', 'small-lib-1.0', 'small-note-1.0']
    assert info.deriver == 'w6llx9aw9nzdd7vw08rrc1q3gb0v7s8r-small-env-1.0.drv'
    assert len(info.sigs) == 1 and info.sigs[0].startswith('nixtest-trusted-1:')


def test_fingerprint_is_what_nix_signs():
    assert NarInfo.parse(NARINFO).fingerprint() == FINGERPRINT


def test_fingerprint_sorts_references():
    info = NarInfo.parse(NARINFO)
    info.references.reverse()
    assert info.fingerprint() == FINGERPRINT


def test_write_then_parse_round_trips():
    info = NarInfo.parse(NARINFO)
    again = NarInfo.parse(info.to_text())
    assert again.to_text() == info.to_text()
    assert again.fingerprint() == info.fingerprint() and again.sigs == info.sigs


def test_defaults_and_unknown_keys():
    text = '\n'.join(line for line in NARINFO.splitlines()
                     if not line.startswith(('Compression', 'References', 'Deriver')))
    info = NarInfo.parse(text + '\nFutureField: whatever\n')
    assert info.compression == 'bzip2' and info.references == [] and info.deriver is None


def replace(key, value):
    lines = [line for line in NARINFO.splitlines() if not line.startswith(key + ':')]
    if value is not None:
        lines.append('%s: %s' % (key, value))
    return '\n'.join(lines)


@pytest.mark.parametrize('text, complaint', [
    (replace('StorePath', None), 'lacks StorePath'),
    (replace('NarHash', None), 'lacks NarHash'),
    (replace('StorePath', '/nix/store/../../etc/passwd'), 'invalid narinfo'),
    (replace('References', 'nothash-x'), 'invalid narinfo'),
    (replace('References', '../../etc'), 'invalid narinfo'),
    (replace('NarHash', 'sha256:abc'), 'invalid narinfo'),
    (replace('NarSize', '-1'), 'NarSize'),
    (replace('NarSize', '1e9'), 'NarSize'),
    (replace('FileSize', '99999999999999999999999'), 'FileSize'),
    (replace('URL', '/etc/passwd'), 'NAR URL'),
    (replace('URL', 'nar/../../secret'), 'NAR URL'),
    (replace('URL', 'http://elsewhere.example/x.nar'), 'NAR URL'),
    (replace('URL', ''), 'NAR URL'),
    (NARINFO + 'NarSize: 1\n', 'twice'),
    (NARINFO + 'not a field\n', 'line 11'),
])
def test_malformed_narinfos_are_refused(text, complaint):
    with pytest.raises(InvalidNarInfo) as raised:
        NarInfo.parse(text, source='file:///cache')
    assert complaint in str(raised.value)
    assert raised.value.cache == 'file:///cache'
