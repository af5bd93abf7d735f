"""What a job's flow is given: the outside systems it touches, its settings, and its gauges."""

from dataclasses import dataclass, field
from typing import Any

from orchestrator.alerts import OperatorAlerts
from orchestrator.cpu import CpuLane
from orchestrator.db import Database, Row
from orchestrator.metrics import Metrics
from orchestrator.openrouter import OpenRouterClient
from orchestrator.outputs import OutputSlots
from orchestrator.polls import PollShare
from orchestrator.runpod import RunPodClient
from orchestrator.settings import Settings
from orchestrator.storage import Storage
from orchestrator.uploads import UploadBudget


@dataclass(frozen=True)
class FlowDeps:
    """The outside systems a job touches."""

    db: Database
    runpod: RunPodClient
    openrouter: OpenRouterClient | None
    storage: Storage
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    alerts: OperatorAlerts = field(default_factory=OperatorAlerts)
    cpu: CpuLane = field(default_factory=CpuLane)
    outputs: OutputSlots = field(default_factory=OutputSlots)
    uploads: UploadBudget = field(default_factory=UploadBudget)
    polls: PollShare = field(default_factory=PollShare)

    async def held(self, name: str, /, job_id: str, **params: Any) -> Row | None:
        """A named query fenced on this worker's hold of the job (`job_id`, `worker_id`); its
        first row, or None when it matched nothing."""
        return await self.db.one(name, job_id=job_id, worker_id=self.settings.worker_id, **params)
