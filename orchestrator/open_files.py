"""Room for klein serve's sockets under the process's open-file limit (RLIMIT_NOFILE).

At full load klein serve holds up to HTTP_MAX_CONNECTIONS incoming connections,
OPENROUTER_MAX_CONCURRENCY to OpenRouter, and the pools to RunPod, Storage and the database:
with the defaults over 1,400 sockets, past the soft limit of 1,024 that many Linux systems start
a process with, where accept() and connect() then fail (EMFILE) under load. Any process may raise
its soft limit up to its hard one; klein serve does so at start, and says so when even the hard
limit is too low.
"""

import logging
import resource

from httpx._config import DEFAULT_LIMITS

from orchestrator.runpod import CONNECTIONS as RUNPOD_CONNECTIONS
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

DATABASE_CONNECTIONS = 20  # the pool's largest size (serve.run_server)
SPARE = 128  # log and image files, the embedded database's and the local endpoint's sockets


def open_files_needed(settings: Settings) -> int:
    """The descriptors klein serve may hold at once with these settings."""
    storage = DEFAULT_LIMITS.max_connections or 0
    return (
        settings.http_max_connections
        + settings.openrouter_max_concurrency
        + RUNPOD_CONNECTIONS
        + storage
        + DATABASE_CONNECTIONS
        + SPARE
    )


def make_room_for_sockets(needed: int) -> int:
    """Raise the soft open-file limit to `needed` (never lowering it, at most to the hard
    limit), warn when that is not enough, and return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # macOS refuses past kern.maxfilesperproc
            log.warning("the open-file limit stays %d: raising it failed (%s)", soft, exc)
        else:
            log.info("open-file limit raised from %d to %d for klein serve's sockets", soft, target)
            soft = target
    if soft < needed:
        log.warning(
            "the open-file limit is %d (hard limit %d), and klein serve may need %d at full "
            "load: raise it (ulimit -n, LimitNOFILE=) or lower HTTP_MAX_CONNECTIONS and "
            "OPENROUTER_MAX_CONCURRENCY",
            soft,
            hard,
            needed,
        )
    return soft
