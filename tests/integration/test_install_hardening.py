"""`klein` on a fresh machine, as an install audit found it: two commands starting the embedded
PostgreSQL at once, a database that accepts but never answers, a signal while the embedded server
runs, the dev tools without their dependencies, Ctrl-C while the modules load.

The embedded PostgreSQL refuses to run as root, and pgserver, run as root, would create a system
user for it; so as root these tests run `klein` as `nobody` (setpriv), in a data folder that
user owns."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "samples" / "portrait.png"
KLEIN_TIMEOUT_S = 60
POLL_S = 0.1
# Settings of this machine that would make `klein` use something other than what a test sets up.
HOST_SETTINGS = ("DATABASE_URL", "RUNPOD_", "COMFY_", "KLEIN_", "LOCAL_", "XDG_RUNTIME_DIR")


def as_klein_user() -> list[str]:
    """The command prefix that runs `klein` as a user the embedded PostgreSQL accepts."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("as root, these tests need setpriv to run klein as nobody")
    nobody = pwd.getpwnam("nobody")
    return ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]


def env_for(home: Path, **settings: str) -> dict[str, str]:
    """This environment without the host's own klein settings; the data folder is `home`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(HOST_SETTINGS)}
    return env | {"KLEIN_HOME": str(home), "HOME": str(home), "PYTHONUNBUFFERED": "1"} | settings


def start_klein(env: dict[str, str], *args: str, log: Path | None = None) -> subprocess.Popen[str]:
    """`python -m orchestrator ARGS` as the klein user; output to `log`, or captured."""
    out = log.open("w") if log is not None else subprocess.PIPE
    try:
        return subprocess.Popen(
            [*as_klein_user(), sys.executable, "-m", "orchestrator", *args],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if log is not None else subprocess.PIPE,
            text=True,
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def postgres_serving(data_dir: Path) -> list[psutil.Process]:
    """The postgres processes running on `data_dir`."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "postgres" and str(data_dir) in " ".join(
            process.info["cmdline"] or []
        ):
            found.append(process)
    return found


def wait_for_line(log: Path, text: str, process: subprocess.Popen[str]) -> None:
    """Until `text` is in the log; fail with the log if the process ends or it takes too long."""
    deadline = time.monotonic() + KLEIN_TIMEOUT_S
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {text!r} from klein (exit {process.poll()}):\n{log.read_text()}")
        time.sleep(POLL_S)


@pytest.fixture
def klein_home() -> Iterator[Path]:
    """A fresh data folder the klein user owns, outside pytest's tmp tree (mode 0700 for root);
    any embedded PostgreSQL a failing test left on it is stopped at teardown."""
    folder = Path(tempfile.mkdtemp(prefix="klein-install-"))
    folder.chmod(0o755)
    home = folder / "home"
    home.mkdir()
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
    yield home
    for process in postgres_serving(home):  # its pgdata, or a test's folders inside it
        process.kill()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(240)
def test_commands_starting_together_on_a_fresh_data_folder_all_succeed(klein_home: Path) -> None:
    # The README's demo starts `klein serve &` and at once `klein submit`: both find the
    # embedded server new, and both may find database `klein` missing.
    for attempt in range(4):
        home = klein_home / f"attempt-{attempt}"
        home.mkdir()
        shutil.copystat(klein_home, home)
        os.chown(home, klein_home.stat().st_uid, klein_home.stat().st_gid)
        started = [start_klein(env_for(home), "status") for _ in range(3)]
        done = [(p.wait(KLEIN_TIMEOUT_S), *p.communicate()) for p in started]

        for code, stdout, stderr in done:
            assert (code, stdout.strip(), stderr) == (0, "no jobs yet", ""), f"{attempt}: {stderr}"
        assert postgres_serving(home / "pgdata") == []


class SilentServer:
    """A TCP server that accepts connections and never says a word (a wedged database, a
    firewall that accepts and drops)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def run_klein(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m orchestrator ARGS` in `env`, to its end (TimeoutExpired if it hangs)."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=KLEIN_TIMEOUT_S,
        check=False,
    )


def test_a_database_that_never_answers_is_one_line_naming_its_host(
    silent_server: SilentServer, tmp_path: Path
) -> None:
    url = f"postgresql://klein:s3cret@127.0.0.1:{silent_server.port}/klein"
    env = env_for(tmp_path, DATABASE_URL=url, DATABASE_CONNECT_TIMEOUT_S="2")

    done = run_klein(env, "status")

    assert done.returncode == 1
    assert done.stderr == (
        f"klein status: cannot connect to the database at 127.0.0.1:{silent_server.port}: "
        "no answer within 2 s (connect_timeout)\n"
    )
    assert "s3cret" not in done.stdout + done.stderr


def test_a_connect_timeout_in_the_url_wins(silent_server: SilentServer, tmp_path: Path) -> None:
    url = f"postgresql://klein@127.0.0.1:{silent_server.port}/klein?connect_timeout=3"
    env = env_for(tmp_path, DATABASE_URL=url, DATABASE_CONNECT_TIMEOUT_S="600")

    done = run_klein(env, "migrate")

    assert done.returncode == 1
    assert done.stderr.endswith(": no answer within 3 s (connect_timeout)\n"), done.stderr


def test_serve_says_why_it_cannot_reach_the_database(
    silent_server: SilentServer, tmp_path: Path
) -> None:
    url = f"postgresql://klein:s3cret@127.0.0.1:{silent_server.port}/klein"
    env = env_for(
        tmp_path,
        DATABASE_URL=url,
        DATABASE_CONNECT_TIMEOUT_S="2",
        RUNPOD_API_BASE="http://127.0.0.1:9/v2",  # no local endpoint: only the database matters
    )

    done = run_klein(env, "serve", "--port", "0")

    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"klein serve: cannot connect to the database at 127.0.0.1:{silent_server.port}: "
        "no answer within 2 s (connect_timeout)"
    )
    assert "s3cret" not in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signalled_command_stops_the_embedded_server(
    signum: signal.Signals, klein_home: Path, tmp_path: Path
) -> None:
    log = tmp_path / "submit.log"
    # Follows a job no `klein serve` runs: it waits until told to stop.
    submit = start_klein(env_for(klein_home), "submit", str(SAMPLE), "x", "--wait", log=log)
    wait_for_line(log, "queued", submit)
    assert postgres_serving(klein_home / "pgdata") != []

    submit.send_signal(signum)
    code = submit.wait(KLEIN_TIMEOUT_S)

    assert code > 0, log.read_text()  # handled: an exit code, not death by the signal
    assert "Traceback" not in log.read_text()
    assert postgres_serving(klein_home / "pgdata") == []
    assert json.loads((klein_home / "pgdata" / ".handle_pids.json").read_text()) == []


def test_sighup_stops_serve_and_its_embedded_server(klein_home: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = env_for(klein_home, RUNPOD_API_BASE="http://127.0.0.1:9/v2")
    serve = start_klein(env, "serve", "--port", "0", log=log)
    wait_for_line(log, "serving on", serve)

    serve.send_signal(signal.SIGHUP)  # the terminal it ran in was closed
    code = serve.wait(KLEIN_TIMEOUT_S)

    assert code == 0, log.read_text()
    assert postgres_serving(klein_home / "pgdata") == []


def klein_in_python(setup: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The `klein` script's own lines (import main, exit with what it returns) after `setup`."""
    script = f"import sys\n{setup}\nfrom orchestrator.__main__ import main\nsys.exit(main())\n"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env_for(Path(tempfile.gettempdir()), DATABASE_URL="postgresql://nobody@127.0.0.1:9/x"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=KLEIN_TIMEOUT_S,
        check=False,
    )


def test_endpoint_without_the_handlers_dependencies_is_one_sentence() -> None:
    # websocket-client comes with the handler extra, which the devtools extra pulls in.
    done = klein_in_python("sys.modules['websocket'] = None", "endpoint", "--port", "0")

    assert done.returncode == 2
    assert done.stderr == (
        "klein endpoint: the local RunPod endpoint is a development tool that needs websocket, "
        "which is not installed: install klein-i2i[devtools]\n"
    )


CTRL_C_ON_IMPORT = """
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "uvloop":
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
"""


def test_ctrl_c_while_the_modules_load_exits_130_quietly() -> None:
    done = klein_in_python(CTRL_C_ON_IMPORT, "status")

    assert (done.returncode, done.stdout, done.stderr) == (130, "", "")
