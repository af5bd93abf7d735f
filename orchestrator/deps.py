"""What a job's flow is given: the outside systems it touches, its settings, and its gauges."""

from dataclasses import dataclass, field

from orchestrator.alerts import OperatorAlerts
from orchestrator.cpu import CpuLane
from orchestrator.db import Database
from orchestrator.metrics import Metrics
from orchestrator.openrouter import OpenRouterClient
from orchestrator.outputs import OutputSlots
from orchestrator.polls import PollShare
from orchestrator.runpod import RunPodClient
from orchestrator.settings import Settings
from orchestrator.storage import Storage


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
    polls: PollShare = field(default_factory=PollShare)
