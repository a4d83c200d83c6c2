"""The Lua scripts (files in ``lua/``), registered once per Redis client."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from shared.scriptchannel import ChannelScript, channel_for

LUA_DIR = Path(__file__).with_name("lua")


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


class Scripts:
    """``Scripts(redis).claim_job(keys=[...], args=[...])``: EVALSHA, loading on first use;
    through the client's ``ScriptChannel`` where it has one (``shared.scriptchannel``)."""

    def __init__(self, redis):
        self._redis = redis
        self._registered = {}

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        script = self._registered.get(name)
        if script is None:
            script = self._redis.register_script(source(name))
            channel = channel_for(self._redis)
            if channel is not None:
                script = ChannelScript(channel, script)
            self._registered[name] = script
        return script
