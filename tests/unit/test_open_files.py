"""klein serve makes room for its sockets under the open-file limit (orchestrator/open_files.py):
each case runs in a child process started with a low soft limit, as many systems start one."""

import resource
import subprocess
import sys

from orchestrator import open_files
from orchestrator.open_files import open_files_needed
from orchestrator.settings import Settings

RLIM_INFINITY = resource.RLIM_INFINITY
HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
ROOM = (
    "import resource; from orchestrator.open_files import make_room_for_sockets; "
    "make_room_for_sockets({needed}); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
)


def soft_limit_after(needed: int, soft: int, hard: int = HARD) -> tuple[int, str]:
    """The soft limit once a child started with (soft, hard) made room for `needed`, and what
    it wrote to stderr."""
    child = subprocess.run(
        [sys.executable, "-c", ROOM.format(needed=needed)],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(child.stdout), child.stderr


def test_the_defaults_need_more_than_the_usual_soft_limit():
    assert open_files_needed(Settings()) > 1024


def test_a_low_soft_limit_is_raised_to_what_the_sockets_need():
    assert soft_limit_after(1500, soft=256, hard=4096) == (1500, "")


def test_a_higher_soft_limit_is_left_as_it_is():
    assert soft_limit_after(1500, soft=3000, hard=4096) == (3000, "")


def test_a_hard_limit_too_low_is_used_whole_and_named():
    soft, said = soft_limit_after(1500, soft=256, hard=600)
    assert soft == 600
    assert "the open-file limit is 600 (hard limit 600)" in said
    assert "HTTP_MAX_CONNECTIONS" in said


def test_a_limit_the_system_will_not_raise_is_named_not_a_crash(monkeypatch, caplog):
    """macOS reports an unlimited hard limit yet refuses a soft one past its per-process cap
    (ValueError): klein serve starts anyway and says what it could not do."""

    def refuse(kind, limits):
        raise ValueError("current limit exceeds maximum limit")

    monkeypatch.setattr(open_files.resource, "getrlimit", lambda kind: (256, RLIM_INFINITY))
    monkeypatch.setattr(open_files.resource, "setrlimit", refuse)
    with caplog.at_level("WARNING", logger="orchestrator.open_files"):
        assert open_files.make_room_for_sockets(1500) == 256
    assert "the open-file limit stays 256: raising it failed" in caplog.text
    assert "klein serve may need 1500" in caplog.text
