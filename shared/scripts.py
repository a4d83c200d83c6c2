"""The Lua scripts (files in ``lua/``), registered once per Redis client."""

from __future__ import annotations

from functools import cache
from pathlib import Path

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
    """``Scripts(redis).claim_job(keys=[...], args=[...])``: EVALSHA, loading on first use."""

    def __init__(self, redis):
        self._redis = redis
        self._registered = {}

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        script = self._registered.get(name)
        if script is None:
            script = self._registered[name] = self._redis.register_script(source(name))
        return script
