"""Architectures from ELF headers: the guard that keeps a closure off a host it cannot run on."""
import os
import shutil
import struct
import subprocess

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.architecture import (
    WrongArchitecture,
    check_closure,
    elf_machine,
    host_machine,
    nix_system,
    normalise,
    path_architecture,
)


def elf_header(machine, is_64=True, big_endian=False):
    """The first 20 bytes of an ELF file for ``machine`` (e_machine), padded as a file."""
    order = '>' if big_endian else '<'
    ident = b'\x7fELF' + bytes([2 if is_64 else 1, 2 if big_endian else 1, 1]) + b'\0' * 9
    return ident + struct.pack(order + 'HH', 2, machine) + b'\0' * 44


def write(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def test_this_machines_programs():
    assert elf_machine('/bin/sh') == host_machine() == normalise(os.uname().machine)


@pytest.mark.skipif(shutil.which('aarch64-linux-gnu-as') is None,
                    reason='needs binutils-aarch64-linux-gnu (make deps)')
def test_a_real_aarch64_program(tmp_path):
    source = write(str(tmp_path / 'exit.s'), b'.global _start\n_start: mov x8, #93\n svc #0\n')
    subprocess.run(['aarch64-linux-gnu-as', '-o', str(tmp_path / 'exit.o'), source], check=True)
    subprocess.run(['aarch64-linux-gnu-ld', '-static', '-o', str(tmp_path / 'exit'),
                    str(tmp_path / 'exit.o')], check=True)
    assert elf_machine(str(tmp_path / 'exit')) == 'aarch64'
    assert elf_machine(str(tmp_path / 'exit.o')) == 'aarch64'   # objects too


@pytest.mark.parametrize('header, machine', [
    (elf_header(62), 'x86_64'),
    (elf_header(183), 'aarch64'),
    (elf_header(3, is_64=False), 'i686'),
    (elf_header(40, is_64=False), 'armv7l'),
    (elf_header(22, big_endian=True), 's390x'),
    (elf_header(4242), 'elf-machine-4242'),
    (b'#!/bin/sh\necho not elf\n', None),
    (b'\x7fEL', None),
    (b'', None),
])
def test_elf_machine(tmp_path, header, machine):
    assert elf_machine(write(str(tmp_path / 'f'), header)) == machine


def test_unreadable_and_missing_files_are_not_elf(tmp_path):
    assert elf_machine(str(tmp_path / 'missing')) is None
    assert elf_machine(str(tmp_path)) is None


def test_path_architecture_looks_at_programs_first_and_never_follows_links(tmp_path):
    top = tmp_path / 'store-path'
    write(str(top / 'share' / 'a-data.bin'), elf_header(183))       # sorted first, but data
    write(str(top / 'bin' / 'tool'), elf_header(62), 0o755)
    os.symlink('/bin/sh', str(top / 'aaa-link'))
    machine, where = path_architecture(str(top))
    assert (machine, where) == ('x86_64', str(top / 'bin' / 'tool'))
    only_link = tmp_path / 'only-link'
    only_link.mkdir()
    os.symlink('/bin/sh', str(only_link / 'sh'))
    assert path_architecture(str(only_link)) == (None, None)
    assert path_architecture(write(str(tmp_path / 'file-path'), elf_header(183))) \
        == ('aarch64', str(tmp_path / 'file-path'))
    assert path_architecture(str(tmp_path / 'missing')) == (None, None)


def test_names():
    assert normalise('ARM64') == 'aarch64' and normalise('amd64') == 'x86_64'
    assert nix_system('arm64') == 'aarch64-linux'


def test_check_closure_names_both_architectures_and_the_file():
    found = {'/nix/store/aaaa-glibc': ('x86_64', '/nix/store/aaaa-glibc/lib/libc.so.6'),
             '/nix/store/bbbb-pg': ('aarch64', '/nix/store/bbbb-pg/bin/postgres')}
    with pytest.raises(WrongArchitecture) as caught:
        check_closure(found, 'x86_64', '/nix/store/bbbb-pg')
    message = str(caught.value)
    assert 'built for aarch64-linux (/nix/store/bbbb-pg/bin/postgres)' in message
    assert 'this host is x86_64-linux' in message
    assert caught.value.expected == 'x86_64' and caught.value.found == 'aarch64'
    with pytest.raises(WrongArchitecture):
        check_closure(found, 'aarch64', '/nix/store/bbbb-pg')   # glibc is x86_64


def test_check_closure_accepts_what_the_host_runs():
    check_closure({'/nix/store/a': ('x86_64', 'f'), '/nix/store/b': ('i686', 'g')}, 'x86_64', 'x')
    check_closure({'/nix/store/a': ('aarch64', 'f')}, 'aarch64', 'x')
    check_closure({}, 'x86_64', 'x')
