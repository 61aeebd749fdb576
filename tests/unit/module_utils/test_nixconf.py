"""nix.conf reading: the rules Nix applies to assignments, extra- settings and includes."""
import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidNixConf
from ansible_collections.nixcache.closure.plugins.module_utils.nixconf import (
    read_nix_conf,
    setting_list,
)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_assignments_comments_and_extra(tmp_path):
    conf = write(tmp_path / 'nix.conf', '\n'.join([
        '# a comment',
        'substituters = https://a.example.org  # trailing comment',
        'extra-substituters = https://b.example.org',
        'trusted-public-keys = a-1:AAAA',
        'extra-trusted-public-keys = b-1:BBBB c-1:CCCC',
        'sandbox = false',
    ]))
    settings = read_nix_conf(str(conf))
    assert setting_list(settings, 'substituters') == ['https://a.example.org', 'https://b.example.org']
    assert setting_list(settings, 'trusted-public-keys') == ['a-1:AAAA', 'b-1:BBBB', 'c-1:CCCC']
    assert settings['sandbox'] == 'false'


def test_later_assignment_replaces_and_old_names_are_aliases(tmp_path):
    conf = write(tmp_path / 'nix.conf', 'binary-caches = https://old\nsubstituters = https://new\n')
    assert setting_list(read_nix_conf(str(conf)), 'substituters') == ['https://new']


def test_includes_relative_absolute_and_optional(tmp_path):
    root = tmp_path / 'root'
    write(root / 'etc/nix/nix.conf', 'substituters = https://a\ninclude extra.conf\n'
                                     '!include /etc/nix/missing.conf\ninclude /etc/nix/abs.conf\n')
    write(root / 'etc/nix/extra.conf', 'extra-substituters = https://b\n')
    write(root / 'etc/nix/abs.conf', 'trusted-public-keys = k-1:KKKK\n')
    settings = read_nix_conf('/etc/nix/nix.conf', root=str(root))
    assert setting_list(settings, 'substituters') == ['https://a', 'https://b']
    assert setting_list(settings, 'trusted-public-keys') == ['k-1:KKKK']


def test_missing_mandatory_include_is_an_error(tmp_path):
    conf = write(tmp_path / 'nix.conf', 'include nowhere.conf\n')
    with pytest.raises(InvalidNixConf, match='included file not found'):
        read_nix_conf(str(conf))


def test_malformed_line_names_file_and_line(tmp_path):
    conf = write(tmp_path / 'nix.conf', 'substituters https://a\n')
    with pytest.raises(InvalidNixConf) as raised:
        read_nix_conf(str(conf))
    assert raised.value.path == '%s:1' % conf


def test_include_loop_is_stopped(tmp_path):
    conf = write(tmp_path / 'nix.conf', 'include nix.conf\n')
    with pytest.raises(InvalidNixConf, match='nested too deep'):
        read_nix_conf(str(conf))


def test_absent_file_gives_no_settings(tmp_path):
    assert read_nix_conf(str(tmp_path / 'absent.conf')) == {}
