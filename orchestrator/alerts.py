"""Problems only an operator can fix (a refused key, no credit, a missing endpoint), by service.

Jobs wait instead of failing while one is open; `/readyz` and the metrics say which and why, and
the first success of that service closes it again.
"""

import logging

from prometheus_client import Gauge

log = logging.getLogger(__name__)


class OperatorAlerts:
    """The open problems, one per service (runpod, openrouter, storage)."""

    def __init__(self, gauge: Gauge | None = None) -> None:
        self._problems: dict[str, str] = {}
        self._gauge = gauge

    def report(self, service: str, message: str) -> None:
        """Open (or restate) a problem; logged loudly the first time."""
        if self._problems.get(service) != message:
            log.error("OPERATOR NEEDED (%s): %s; jobs wait until it is fixed", service, message)
        self._problems[service] = message
        if self._gauge is not None:
            self._gauge.labels(service).set(1)

    def resolve(self, service: str) -> None:
        """The service answered normally again: its problem is gone."""
        if self._problems.pop(service, None) is not None:
            log.warning("%s works again; waiting jobs resume", service)
            if self._gauge is not None:
                self._gauge.labels(service).set(0)

    @property
    def problems(self) -> dict[str, str]:
        """The open problems by service."""
        return dict(self._problems)
