"""A temporary Prefect server never outlives the flow process that started it.

A flow run with no ``PREFECT_API_URL`` starts a temporary ("ephemeral") Prefect
server, a uvicorn child process that Prefect stops at exit.  A flow process
killed with SIGKILL (an out-of-memory kill, ``kill -9``, a lost node) gets no
exit: the server would keep running, holding its port and SQLite database.

:func:`install` wraps Prefect's start of that server so that a watchdog is
started beside it: a tiny Python process that polls, twice a second, whether
the flow process still lives (its parent; a killed parent re-parents it) and
then stops the server (SIGTERM, SIGKILL after 5 s).  The watchdog is
``python -m flows.server_watchdog <flow pid> <server pid>``; it imports nothing
but the standard library and ends by itself when the server ends.  Nothing is
installed when a server address is configured.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not reaped yet, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def watch(parent: int, server: int, poll_s: float = 0.5) -> None:
    """Until ``server`` ends: once ``parent`` is gone (this process re-parented), stop ``server``."""
    while alive(server):
        if os.getppid() != parent:
            os.kill(server, signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while alive(server) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(server):
                os.kill(server, signal.SIGKILL)
            return
        time.sleep(poll_s)


_MARK = "_bzpipe_watchdog"
_WATCHDOGS: list[subprocess.Popen[bytes]] = []   # kept referenced while they run


def start_watchdog(server_pid: int) -> subprocess.Popen[bytes]:
    """Start the watchdog of ``server_pid`` for this process (see the module docstring)."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.server_watchdog", str(os.getpid()),
                             str(server_pid)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            close_fds=True, start_new_session=True)
    _WATCHDOGS[:] = [w for w in _WATCHDOGS if w.poll() is None] + [proc]
    return proc


def install() -> bool:
    """Watch every temporary Prefect server this process starts; False when a server address is set."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return False
    from prefect.server.api import server

    cls = server.SubprocessASGIServer
    original = cls._run_uvicorn_command
    if getattr(original, _MARK, False):
        return True

    def run_uvicorn_command(self: Any) -> subprocess.Popen[Any]:
        proc = original(self)
        start_watchdog(proc.pid)
        return proc

    setattr(run_uvicorn_command, _MARK, True)
    cls._run_uvicorn_command = run_uvicorn_command  # type: ignore[method-assign]
    return True


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
