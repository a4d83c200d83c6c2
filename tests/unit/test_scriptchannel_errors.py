"""Error replies read by the script channel become the exceptions redis-py raises for them."""

import pytest
from redis import exceptions as errors

from shared.scriptchannel import _error


@pytest.mark.parametrize("reply, cls, message", [
    ("NOSCRIPT No matching script. Please use EVAL.", errors.NoScriptError, "No matching script. Please use EVAL."),
    ("LOADING Redis is loading the dataset in memory", errors.BusyLoadingError,
     "Redis is loading the dataset in memory"),
    ("READONLY You can't write against a read only replica.", errors.ReadOnlyError,
     "You can't write against a read only replica."),
    ("ERR max number of clients reached", errors.ConnectionError, "max number of clients reached"),
    ("ERR Error running script: boom", errors.ResponseError, "Error running script: boom"),
    ("WRONGPASS invalid username-password pair", errors.AuthenticationError, "invalid username-password pair"),
    ("MOVED 3999 127.0.0.1:6381", errors.MovedError, "3999 127.0.0.1:6381"),
    ("CROSSSLOT Keys in request don't hash to the same slot", errors.ClusterCrossSlotError,
     "Keys in request don't hash to the same slot"),
    ("BUSY Redis is busy running a script", errors.ResponseError, "BUSY Redis is busy running a script"),
])
def test_error_replies_map_to_redis_py_classes(reply, cls, message):
    exc = _error(Exception(reply))
    assert type(exc) is cls and str(exc) == message


def test_a_loading_redis_is_retried_like_a_lost_connection():
    # The channel makes again calls that fail with a ConnectionError: LOADING (a restarting Redis) is one.
    assert isinstance(_error(Exception("LOADING Redis is loading")), errors.ConnectionError)
    assert isinstance(_error(Exception("MOVED 1 127.0.0.1:7000")).node_addr, tuple)
