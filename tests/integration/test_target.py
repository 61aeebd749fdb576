"""The ``target_host`` fixture: a fresh Debian root that Ansible reaches over SSH like an
EC2 instance."""
import pytest

from nixtest.ansible import run_playbook
from nixtest.target import mounts_under

pytestmark = pytest.mark.slow

PLAYBOOK = """
- hosts: target
  gather_facts: false
  tasks:
    - ansible.builtin.command: cat /etc/debian_version
      register: debian_version
      changed_when: false
    - ansible.builtin.setup:
      register: facts
    - ansible.builtin.debug:
        msg: "{{ ansible_facts['distribution'] }} {{ ansible_facts['distribution_release'] }}"
      register: distribution
"""


def test_ansible_reaches_the_target(target_host):
    result = run_playbook(PLAYBOOK, inventory=target_host.inventory())
    result.assert_ok()
    with open(target_host.path('/etc/debian_version')) as f:
        expected = f.read().strip()
    assert expected.startswith('12.')
    assert result.registered('debian_version')['stdout'].strip() == expected
    assert result.registered('distribution')['msg'] == 'Debian bookworm'
    facts = result.registered('facts')['ansible_facts']  # setup's raw answer
    assert facts['ansible_distribution'] == 'Debian'
    assert facts['ansible_user_id'] == 'root'


def test_target_is_its_own_host(target_host):
    locales = target_host.run('locale -a', check=True).stdout.split()
    assert 'en_US.utf8' in locales
    # Its own PID namespace with sshd as PID 1, and its own mounts.
    init = target_host.run('cat /proc/1/comm', check=True).stdout.strip()
    assert init == 'sshd'
    assert target_host.run('test -c /dev/null && test -e /dev/ptmx').returncode == 0
    # Nothing it mounts shows in the machine's mount table.
    assert mounts_under(target_host.root) == []
