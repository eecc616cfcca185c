"""Exit with the parent: a worker process must not outlive the process that dispatches to it.

A loky worker busy with a long job does not notice that its scheduler was killed (SIGKILL, out of
memory) until the job ends, and an idle one waits for its idle timeout: minutes, with a model and
a dataset in memory. :func:`exit_with` starts a daemon thread that checks about once a second
whether the watched process is still there; when it is not, it kills this process's own
descendants (a defense's isolated process, data loaders: read from ``/proc``) and ends this
process (``os._exit``). Finished records are safe: they are written atomically, and the run claims
(``flock``) are released by the operating system when the process ends.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

POLL_SECONDS = 1.0
EXIT_CODE = 70  # what a worker whose scheduler vanished exits with

_watched: set[int] = set()


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time) of every process, read from ``/proc`` (empty where
    there is none)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended meanwhile
        table[int(stat.parent.name)] = (int(fields[1]), fields[0], fields[19])
    return table


def descendants(pid: int) -> list[int]:
    """The living (not zombie) children of ``pid``, their children, and so on."""
    table = process_table()
    found: list[int] = []
    frontier = {pid}
    while frontier:
        frontier = {p for p, (ppid, state, _) in table.items() if ppid in frontier and state not in "ZX"}
        found += sorted(frontier)
    return found


def _exit_with_descendants() -> None:
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(EXIT_CODE)


def alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (killed but not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): os.kill is all we have
    return state not in ("Z", "X")


def exit_with(pid: int, poll_seconds: float = POLL_SECONDS) -> None:
    """End this process and its descendants soon after process ``pid`` ends (once per pid; a no-op
    for this process).

    When ``pid`` is this process's parent, being re-parented also counts as its end, which is
    noticed even before the dead parent is reaped."""
    if pid == os.getpid() or pid in _watched:
        return
    _watched.add(pid)
    child_of_it = os.getppid() == pid

    def watch():
        while True:
            time.sleep(poll_seconds)
            if (child_of_it and os.getppid() != pid) or not alive(pid):
                _exit_with_descendants()

    threading.Thread(target=watch, name=f"exit-with-{pid}", daemon=True).start()
