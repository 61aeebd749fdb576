"""Progress of a long ``realise`` in the ``ansible-playbook`` output, over SSH, from a slow
loopback cache; results and idempotence as without it."""
import os
import re

import pytest

from nixtest import nix
from nixtest.ansible import run_playbook

pytestmark = pytest.mark.slow

PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: Realise
      nixcache.closure.realise:
        paths: ["{{ top }}"]
        root: "{{ root }}"
        substituters: ["{{ url }}"]
        trusted_public_keys: ["{{ key }}"]
        jobs: 1
      register: realised
'''
LINE = re.compile(r'^realise \[target\]: (\d+)/(\d+) paths, ([\d.]+)/([\d.]+) MiB, ([\d.]+) MiB/s$',
                  re.MULTILINE)


def test_a_slow_realisation_shows_progress_and_changes_nothing_else(
        caches, small_closure, http_cache, sshd_target, alt_root):
    # Each NAR answers after 2.5 s: about 15 s for the six paths, one at a time.
    http_cache.fault('/xz/nar/*', delay=2.5, times=len(small_closure.paths))
    extra_vars = dict(top=small_closure.top, root=str(alt_root), url=http_cache.url_for('xz'),
                      key=caches['xz'].public_key)
    inventory = sshd_target.inventory('target')
    result = run_playbook(PLAY, inventory, extra_vars=extra_vars, verbosity=1).assert_ok()

    lines = [tuple(float(g) for g in m.groups()) for m in LINE.finditer(result.stdout)]
    assert len(lines) >= 2, result.stdout
    assert all(total == len(small_closure.paths) for _done, total, _mb, _total_mb, _rate in lines)
    assert [done for done, *_rest in lines] == sorted(done for done, *_rest in lines)
    assert lines[-1][0] >= 2
    # -v: a line for each fetched path.
    fetched = re.findall(r'^realise \[target\]: fetched (/nix/store/\S+) ', result.stdout, re.MULTILINE)
    assert len(fetched) >= lines[-1][0]
    assert set(fetched) <= set(small_closure.paths)

    realised = result.registered('realised')
    assert realised['changed'] is True
    assert sorted(realised['fetched']) == small_closure.paths
    assert realised['invocation']['module_args']['progress_file'] is None
    assert os.listdir(str(alt_root / 'nix/var/nixcache/progress')) == []
    assert nix.verify_store(str(alt_root)) == []

    again = run_playbook(PLAY, inventory, extra_vars=extra_vars, verbosity=1).assert_ok()
    assert again.registered('realised')['changed'] is False
    assert LINE.findall(again.stdout) == []
