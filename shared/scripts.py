"""The Lua scripts (files in ``lua/``), registered once per Redis client."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import ClusterCrossSlotError

from shared.scriptchannel import ChannelScript, ScriptChannel

LUA_DIR = Path(__file__).with_name("lua")
# Through a script channel, these are written at once rather than with the rest of the loop
# turn's calls: the scripts that publish a job's events, whose latency subscribers see.
SENT_AT_ONCE = {"publish_events", "finish_job", "park_job", "cancel_job"}


@cache
def source(name: str) -> str:
    """The script's text, with ``--#include NAME`` lines replaced by ``lua/NAME.lua``."""
    lines = []
    for line in (LUA_DIR / f"{name}.lua").read_text().splitlines():
        if line.startswith("--#include "):
            lines.append(source(line.split(maxsplit=1)[1].strip()))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


class Script(Protocol):
    """A registered script, called as redis-py's are: ``await script(keys=[...], args=[...])``,
    ``client=`` a pipeline to queue the call on."""

    def __call__(self, keys: Sequence[Any] = ..., args: Sequence[Any] = ..., client: Any = ...) -> Awaitable[Any]: ...


class SlotChecked:
    """A script that refuses, as Redis Cluster does, a call whose keys are in more than one hash
    slot, on any Redis (``CHATFLEET_CHECK_SLOTS``: the tests run the fleet so)."""

    def __init__(self, name: str, script: Script):
        self.name = name
        self.script = script

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None) -> Awaitable[Any]:
        slots = {key_slot(key.encode() if isinstance(key, str) else key) for key in keys}
        if len(slots) > 1:
            raise ClusterCrossSlotError(f"CROSSSLOT script {self.name}: its keys are in {len(slots)} hash slots: "
                                        f"{list(keys)}")
        return self.script(keys=keys, args=args) if client is None else self.script(keys=keys, args=args, client=client)


class Scripts:
    """``Scripts(redis).claim_job(keys=[...], args=[...])``: EVALSHA, loading on first use;
    through ``channel`` where one is given (``shared.scriptchannel``), else through ``redis``.
    With ``check_slots``, a call whose keys span hash slots is refused (``SlotChecked``)."""

    def __init__(self, redis: Any, channel: ScriptChannel | None = None, check_slots: bool = False):
        self._redis = redis
        self._channel = channel
        self._check_slots = check_slots
        self._registered: dict[str, Script] = {}

    def __getattr__(self, name: str) -> Script:
        if name.startswith("_"):
            raise AttributeError(name)
        script = self._registered.get(name)
        if script is None:
            registered: AsyncScript = self._redis.register_script(source(name))
            script = registered
            if self._channel is not None:
                script = ChannelScript(self._channel, registered, at_once=name in SENT_AT_ONCE)
            if self._check_slots:
                script = SlotChecked(name, script)
            self._registered[name] = script
        return script
