"""Helpers for the collection's tests: real Nix, loopback servers and runners.

Modules:

``nix``       build fixtures with real Nix, write and sign binary caches, judge stores
``loopback``  the lifecycle of the loopback HTTP servers below (a free port, a serving thread)
``http``      a threaded loopback HTTP server with Range support, fault injection and a log
``sshd``      a private sshd on loopback that Ansible reaches as a bare managed host
``ansible``   run ``ansible-playbook`` in isolation and read every task result as JSON
``postgres``  run initdb, pg_ctl and psql from a store written under an alternate root
"""
import os

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS_DIR)
FIXTURES_DIR = os.path.join(TESTS_DIR, 'fixtures')
BUILD_DIR = os.path.join(REPO, 'build')
COLLECTIONS_PATH = os.path.join(BUILD_DIR, 'collections')
