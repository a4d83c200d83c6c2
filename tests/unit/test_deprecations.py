"""A deprecation the fleet's own code sets off fails the tests (pyproject.toml's filterwarnings): the
guarded private hooks into httpx, httpcore, kombu and Celery are the first to hear of a change."""

import warnings

import pytest


@pytest.mark.parametrize("module", ["worker.providers.netio", "worker.queue.broker", "shared.jobspec", "api.main"])
def test_a_deprecation_raised_in_the_fleets_code_is_an_error(module):
    with pytest.raises(DeprecationWarning, match="going away"):
        warnings.warn_explicit("this hook is going away", DeprecationWarning, f"{module}.py", 1, module=module)


def test_a_deprecation_elsewhere_is_only_shown():
    with pytest.warns(DeprecationWarning):
        warnings.warn_explicit("someone else's", DeprecationWarning, "httpx/_client.py", 1, module="httpx._client")
    with pytest.warns(DeprecationWarning):  # a name that only starts like one of the fleet's rooms
        warnings.warn_explicit("not ours", DeprecationWarning, "apiary.py", 1, module="apiary")
