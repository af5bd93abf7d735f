"""`klein submit --wait`: follow a job to its end, showing its live progress.

On a terminal one line is redrawn in place (status, stage, a bar for sampling step k of n);
anywhere else (a pipe, a log file) one line is printed per change.
"""

import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from orchestrator.console import FINISHED, LABELS, describe, shown, shown_status

UNCLAIMED_HINT = (
    "  (still queued after {seconds:g} s: is `klein serve` running against this database?)"
)
BAR_WIDTH = 20
CLEAR_LINE = "\r\x1b[K"
SHORT_ID_CHARS = 8


def progress_bar(step: int, steps: int, width: int = BAR_WIDTH) -> str:
    """`[#########-----------]  9/20`: step k of n as a bar (k clamped to 0..n)."""
    done = max(0, min(step, steps))
    filled = round(width * done / steps) if steps > 0 else 0
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{steps}"


def render(row: dict[str, Any], id_chars: int = 36) -> str:
    """One line for a job being followed: its state, then its stage and step when known (the
    job id cut to `id_chars`, which the terminal's redrawn line uses to fit its width)."""
    status = shown_status(row)
    progress = row.get("progress")
    if status in FINISHED:
        return describe(row)
    line = f"{str(row['job_id'])[:id_chars]}  {LABELS.get(status, status)}"
    if not isinstance(progress, dict):
        return line
    if progress.get("stage"):
        line += f"  {progress['stage']}"
    if progress.get("node"):
        line += f" ({progress['node']})"
    step, steps = progress.get("step"), progress.get("steps")
    if isinstance(step, int) and isinstance(steps, int) and steps > 0:
        line += f"  {progress_bar(step, steps)}"
    return shown(line)


class Display:
    """Where the follower's lines go: redrawn in place on a terminal, appended elsewhere."""

    def __init__(self, out: TextIO, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.width = shutil.get_terminal_size(fallback=(100, 24)).columns
        self.last: str | None = None
        self.open_line = False

    def show_row(self, row: dict[str, Any]) -> None:
        """A job's line: on a terminal, short enough to redraw in place until the job ends."""
        if self.tty and not finished(row):
            self.show(render(row, id_chars=SHORT_ID_CHARS)[: max(20, self.width - 1)])
        else:
            self.show(render(row))

    def show(self, line: str) -> None:
        """Show the line if it differs from the last one shown."""
        if line == self.last:
            return
        self.last = line
        if self.tty:
            self.out.write(f"{CLEAR_LINE}{line}")
            self.open_line = True
        else:
            self.out.write(f"{line}\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A line of its own (a hint), below the redrawn one."""
        self.end()
        print(text, file=self.out, flush=True)

    def end(self) -> None:
        """Leave the redrawn line as it is and move below it."""
        if self.open_line:
            self.out.write("\n")
            self.out.flush()
            self.open_line = False


def finished(row: dict[str, Any]) -> bool:
    """Both the work and its job have ended."""
    return row["work_status"] in FINISHED and row["job_status"] in FINISHED


def _unclaimed(row: dict[str, Any]) -> bool:
    return (row["work_status"], row["job_status"]) == ("pending", "pending")


def wait_for(
    fetch: Callable[[], dict[str, Any] | None],
    timeout_s: float,
    out: TextIO = sys.stdout,
    interval_s: float = 0.5,
    *,
    hint_after_s: float = 15.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    tty: bool | None = None,
) -> dict[str, Any] | None:
    """Follow a job until it ends or timeout_s passes, showing each change of state or progress
    (and, once, a hint when nothing has picked the job up for a while)."""
    display = Display(out, tty)
    started = clock()
    deadline, hinted = started + timeout_s, False
    try:
        while True:
            row = fetch()
            if row is not None:
                display.show_row(row)
                if finished(row):
                    return row
                if not hinted and _unclaimed(row) and clock() - started >= hint_after_s:
                    display.note(UNCLAIMED_HINT.format(seconds=hint_after_s))
                    hinted = True
            if clock() + interval_s > deadline:
                return row
            sleep(interval_s)
    finally:
        display.end()
