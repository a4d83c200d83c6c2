import pytest

from tests.unit.jobstores import fake_store


@pytest.fixture
def store():
    """A job store on fakeredis."""
    return fake_store()
