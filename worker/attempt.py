"""One attempt at a job, as the process holds it: the runtime's handle (``RunningJob``: how the
lease keeper renews or stops it) and the runner's state (``Attempt``: what was delivered, what
it is billed)."""

from __future__ import annotations

import asyncio
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
