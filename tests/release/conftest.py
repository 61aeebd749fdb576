"""Fixtures of the release suite."""
import pytest

from nixtest.release import tool


@pytest.fixture(scope='session')
def source_items():
    """Every plugin, role entry point, option and return value the repository documents."""
    versions = tool('versions')
    found, errors = versions.items(versions.metadata_dump())
    assert not errors, errors
    return found
