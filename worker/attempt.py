"""One attempt at a job, as the process holds it: the runtime's handle (``RunningJob``: how the
lease keeper renews or stops it) and the runner's state (``Attempt``: what was delivered, what
it is billed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from shared.catalog import ModelSpec
from shared.usage import UsageRecord
from worker.publishing import Transcript


@dataclass
class RunningJob:
    job_id: str
    token: str
    task: asyncio.Task
    reason: str | None = None
    # (account, model, deployment, API key) while the job holds concurrency leases.
    limits: tuple[str, str, str, str] | None = None
    # Whether the attempt holds the job's lease (only then is it renewed and watched).
    owned: bool = False

    def stop(self, reason: str) -> None:
        """Interrupt the attempt (``reason``: cancel, lost, shutdown). Re-checked here: an
        attempt that has meanwhile finished or parked its job released the lease itself and must
        not be interrupted."""
        if self.reason is None and self.owned:
            self.reason = reason
            self.task.cancel()


@dataclass
class Attempt(Transcript):
    account_id: str = ""
    key_id: str = ""  # the API key the job was submitted with ("" for none)
    # The models that key may use (None: every model), and the most the job may cost where a
    # budget holds it (None: no budget): a fallback model outside either is not tried.
    key_models: frozenset[str] | None = None
    affordable: Callable[[ModelSpec], bool] | None = None
    model_id: str = ""
    started: float = 0.0
    typical_prompt_tokens: int = 0  # the prompt's count while its provider has reported none
    submitted_at: float = 0.0
    batch_id: str = ""
    spec: ModelSpec | None = None
    usage: UsageRecord | None = None
    handle: RunningJob | None = None
    number: int = 0  # which delivery of the job this attempt is (the claim's count)
    served_by: str = ""  # model@deployment of the call that answered

    def may_fall_back_to(self, spec: ModelSpec) -> bool:
        """Whether a fallback model is one the job's key may use, within what its budget holds."""
        if self.key_models is not None and spec.id not in self.key_models:
            return False
        return self.affordable is None or self.affordable(spec)

    def serve(self, route) -> None:
        """The answer came from ``route`` (a ``worker.failover.Route``): its model is billed."""
        self.spec = route.spec
        self.served_by = route.label

    @property
    def provider(self) -> str:
        return self.spec.family if self.spec is not None else "unknown"

    def log_context(self) -> dict:
        """The job context carried by this attempt's log lines (never any content)."""
        out = {"job_id": self.job_id, "account_id": self.account_id, "model": self.model_id,
               "attempt": self.number}
        if self.spec is not None:
            out["provider"] = self.spec.family
        if self.batch_id:
            out["batch_id"] = self.batch_id
        return out
