# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Functions of a C library called through ``ctypes`` (see ``libcrypto`` and ``libzstd``)."""

import ctypes
from typing import Any


def bind(library: ctypes.CDLL, name: str, result: Any, *arguments: Any) -> Any:
    """The C function ``name`` of ``library`` with its result and argument types declared;
    AttributeError when the library lacks it."""
    function = getattr(library, name)
    function.restype = result
    function.argtypes = list(arguments)
    return function
