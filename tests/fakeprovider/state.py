"""What the fake holds between requests: its config, the pending script, the request log, counters."""

from __future__ import annotations

import fnmatch
import itertools
from collections import deque
from typing import Any

from .knobs import DEFAULT_CONFIG, ConfigError, check_knobs


class State:
    def __init__(self, config: dict[str, Any]):
        self.initial = dict(DEFAULT_CONFIG)
        self.initial.update(config)
        check_knobs(self.initial, where="config")
        self.config = dict(self.initial)
        self.script: list[dict[str, Any]] = []
        self.records: deque[dict[str, Any]] = deque(maxlen=self.config["record_limit"] or None)
        self.ids = itertools.count(1)
        self.active = 0
        self.active_streams = 0
        self.peak_active = 0
        self.total = 0

    def reset(self) -> None:
        self.config = dict(self.initial)
        self.script.clear()
        self.records = deque(maxlen=self.config["record_limit"] or None)
        self.peak_active = self.active
        self.total = 0

    def set_config(self, updates: dict[str, Any]) -> None:
        unknown = set(updates) - set(DEFAULT_CONFIG)
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}")
        check_knobs(updates, where="config")
        self.config.update(updates)
        if "record_limit" in updates:
            self.records = deque(self.records, maxlen=self.config["record_limit"] or None)

    def take_behaviour(self, family: str, path: str, stream: bool) -> dict[str, Any] | None:
        for i, b in enumerate(self.script):
            fam = b.get("family")
            if fam is not None and family not in ([fam] if isinstance(fam, str) else fam):
                continue
            if "path" in b and not fnmatch.fnmatchcase(path, b["path"]):
                continue
            if "stream" in b and bool(b["stream"]) != stream:
                continue
            times = b.get("times", 1)
            if times <= 1:
                del self.script[i]
            else:
                b["times"] = times - 1
            return b
        return None

    def record(self, rec: dict[str, Any]) -> None:
        if self.config["record_limit"]:
            self.records.append(rec)
