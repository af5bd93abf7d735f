"""What a busy event loop does to the output path's CPU steps: each step's wall time per call
alone, and while another thread of the same process runs Python without pause, as klein serve's
event loop thread does under load.

A C call that lets go of the GIL (to run in parallel) must win it back afterwards; while another
thread holds it, that waits up to the interpreter's switch interval (5 ms) each time. So a step
that lets go of the GIL often (pybase64's decode, each chunk's CRC, ISA-L's inflater for every
block of output) takes many times its own time in a busy process. That is why an output of usual
size is unpacked on the event loop rather than in the CPU lane (orchestrator/finalize.py): the
lane's call took 3-4 ms more than the unpacking's own 0.5 ms at 2 jobs/s. The steps run on the
bench's 1168x880 photo-like PNG (2.1 MB) and its RunPod answer (2.8 MB of base64 in JSON). Left
out: the real loop's own pauses (it lets go of the GIL at every socket call), so "busy" is the
worst case, not klein serve's typical one.

    .venv/bin/python -m bench.gil_contention [--calls 20] [--rounds 3]
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
import zlib
from collections.abc import Callable

import msgspec
import pybase64
from isal import isal_zlib

from bench.benchkit import calls_and_rounds, print_table
from bench.fakes import photo_png
from handler.contract import ready_png
from orchestrator.output_image import strip_text_chunks, unpack_output

PROG = "bench.gil_contention"
OUTPUT_SIZE = (1168, 880)


def steps() -> dict[str, Callable[[], object]]:
    """The output path's steps, each on the bench's output."""
    png = strip_text_chunks(photo_png(*OUTPUT_SIZE))
    output = {"image": pybase64.b64encode(png).decode("ascii"), "seed": 7}
    answer = msgspec.json.encode({"id": "j", "status": "COMPLETED", "output": output})
    header = ready_png._header(png, 10**8)
    assert header is not None
    chunks = list(_chunk_bodies(png))
    return {
        "parse the 2.8 MB answer (msgspec)": lambda: msgspec.json.decode(answer),
        "unpack the output (pybase64, strip)": lambda: unpack_output(output),
        "chunk CRCs, zlib (before)": lambda: [zlib.crc32(chunk) for chunk in chunks],
        "chunk CRCs, ISA-L (now)": lambda: [isal_zlib.crc32(chunk) for chunk in chunks],
        "the whole proof (ready_png_size)": lambda: ready_png.ready_png_size(png, 10**8),
    }


def _chunk_bodies(png: bytes) -> list[bytes]:
    """Each chunk's data, as ready_png checks it (a 1 MP output's IDATs are 64 KiB each)."""
    bodies, position = [], len(ready_png.SIGNATURE)
    while position + 12 <= len(png):
        length = int.from_bytes(png[position : position + 4], "big")
        bodies.append(png[position + 8 : position + 8 + length])
        position += 12 + length
    return bodies


def wall_ms(call: Callable[[], object], calls: int, busy: bool) -> float:
    """Wall ms per call, with or without a thread running Python meanwhile."""
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(stop,), daemon=True)
    if busy:
        spinner.start()
        time.sleep(0.05)
    try:
        call()
        started = time.perf_counter()
        for _ in range(calls):
            call()
        return (time.perf_counter() - started) / calls * 1000
    finally:
        stop.set()
        if busy:
            spinner.join()


def _spin(stop: threading.Event) -> None:
    count = 0
    while not stop.is_set():
        count += 1


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    args = calls_and_rounds(argv, PROG, __doc__, calls=20, kind="step", turns="alone and busy")
    figures: dict[tuple[str, bool], list[float]] = {}
    for round_ in range(args.rounds):
        for name, call in steps().items():
            for busy in (False, True) if round_ % 2 == 0 else (True, False):
                figures.setdefault((name, busy), []).append(wall_ms(call, args.calls, busy))
    rows = []
    for name in steps():
        alone, busy = (statistics.median(figures[(name, b)]) for b in (False, True))
        rows.append((name, f"alone {alone:.2f}, busy {busy:.2f} ({busy / alone:.0f}x)"))
    interval_ms = sys.getswitchinterval() * 1000
    print_table(
        f"wall ms per call, median of {args.rounds} rounds (switch interval {interval_ms:g} ms)",
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
