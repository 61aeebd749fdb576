# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which machine a closure is built for, read from the ELF headers of its files.

A store path holds no declaration of its architecture, but its executables and shared
libraries do: ``e_machine`` in the ELF header.  ``path_architecture`` returns the machine
of the first ELF file found in a store path (programs and libraries first); a closure of
paths built for one system yields one machine.  Machines are named as ``uname -m`` names
them on Linux, and as Nix systems (``aarch64-linux``) in messages.
"""

import os
import platform
import struct
from typing import Any, Dict, Optional, Tuple

from ansible_collections.nixcache.closure.plugins.module_utils.errors import NixCacheError

ELF_MAGIC = b'\x7fELF'
# e_machine -> uname -m, for (machine, 64-bit) where the class matters.
MACHINES = {
    (3, False): 'i686',
    (62, True): 'x86_64',
    (183, True): 'aarch64',
    (40, False): 'armv7l',
    (243, True): 'riscv64',
    (21, True): 'ppc64le',
    (22, True): 's390x',
}
# Names other tools use for the same machines.
ALIASES = {'amd64': 'x86_64', 'x64': 'x86_64', 'arm64': 'aarch64', 'i386': 'i686',
           'i586': 'i686', 'armhf': 'armv7l', 'armv7': 'armv7l', 'armv7-a': 'armv7l'}
# What a host of the key runs besides its own machine.
RUNS_ALSO = {'x86_64': ('i686',), 'aarch64': ('armv7l',)}
# Where programs and libraries live: looked at first.
FIRST = ('bin', 'sbin', 'lib', 'libexec', 'lib64')
HEADER_SIZE = 20


class WrongArchitecture(NixCacheError):
    """A closure built for another machine than the host's."""


def normalise(machine: str) -> str:
    """``uname -m`` spelling of a machine name (``arm64`` -> ``aarch64``)."""
    machine = (machine or '').strip().lower()
    return ALIASES.get(machine, machine)


def host_machine() -> str:
    """This host's machine, as ``uname -m`` names it."""
    return normalise(platform.machine())


def nix_system(machine: str) -> str:
    """The Nix system of a Linux machine (``aarch64`` -> ``aarch64-linux``)."""
    return '%s-linux' % normalise(machine)


def elf_machine(path: str) -> Optional[str]:
    """The machine an ELF file is built for, or None for anything that is not ELF.

    Unknown machines are named ``elf-machine-N``."""
    try:
        with open(path, 'rb') as handle:
            header = handle.read(HEADER_SIZE)
    except (IOError, OSError):
        return None
    if len(header) < HEADER_SIZE or not header.startswith(ELF_MAGIC):
        return None
    is_64 = header[4:5] == b'\x02'
    order = '>' if header[5:6] == b'\x02' else '<'
    machine = struct.unpack(order + 'H', header[18:20])[0]
    return MACHINES.get((machine, is_64), 'elf-machine-%d' % machine)


def _files(top):
    """Regular files under ``top`` (symlinks not followed), programs and libraries first."""
    names = sorted(os.listdir(top), key=lambda name: (name not in FIRST, name))
    for name in names:
        path = os.path.join(top, name)
        if os.path.islink(path):
            continue
        if os.path.isdir(path):
            yield from _files(path)
        elif os.path.isfile(path):
            yield path


def path_architecture(real_path: str) -> Tuple[Optional[str], Optional[str]]:
    """``(machine, file)`` of the first ELF file in a store path, or ``(None, None)``."""
    if os.path.isfile(real_path) and not os.path.islink(real_path):
        machine = elf_machine(real_path)
        return (machine, real_path) if machine else (None, None)
    if not os.path.isdir(real_path) or os.path.islink(real_path):
        return None, None
    for path in _files(real_path):
        machine = elf_machine(path)
        if machine:
            return machine, path
    return None, None


def runs_on(machine: str, host: str) -> bool:
    """Whether code built for ``machine`` runs on a ``host``."""
    return machine == host or machine in RUNS_ALSO.get(host, ())


def check_closure(architectures: Dict[Any, Tuple[Optional[str], Optional[str]]], host: str, requested: Any) -> None:
    """Raise WrongArchitecture when a path of ``architectures`` (store path -> (machine,
    file)) does not run on ``host``; the message names both machines and the file."""
    for store_path in sorted(architectures):
        machine, found_in = architectures[store_path]
        if machine and not runs_on(machine, host):
            raise WrongArchitecture(
                'the closure of %s is built for %s (%s), but this host is %s: use the pin '
                'built for %s' % (requested, nix_system(machine), found_in, nix_system(host),
                                  nix_system(host)),
                path=store_path, expected=host, found=machine)
