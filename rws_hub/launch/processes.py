"""Processes started by ``rws serve`` and ``rws up``: start, record, find again, stop.

One helper for both launchers (:mod:`rws_hub.launch.torchserve`, :mod:`rws_hub.launch.stack`):

* :func:`spawn` starts a command as the leader of its own process group (a new session), its
  console appended to a log file, and returns a :class:`Managed` process;
* :func:`write_record` / :func:`read_record` / :func:`remove_record` keep a small JSON record
  (``server.json``, ``stack.json``) in a run directory, so that another command (``--stop``)
  can find the processes again with :meth:`Managed.attach`-style code;
* :meth:`Managed.stop` ends exactly the recorded group: a polite signal first (to one process,
  or to the whole group), then ``SIGKILL`` to the group after a grace period;
* :func:`pid_alive` tells whether a pid runs (a zombie counts as gone).

Only processes this package started are ever signalled: the pids come from the records.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Managed",
    "pid_alive",
    "read_record",
    "remove_record",
    "send_signal",
    "signal_group",
    "spawn",
    "tail",
    "wait_gone",
    "write_record",
]


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists and is not a zombie (None and pids <= 1 are not alive)."""
    if pid is None or pid <= 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def send_signal(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``; a process that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pgid``; a group that is already gone is fine."""
    if pgid <= 1:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_gone(pids: Sequence[int | None], timeout: float, poll: float = 0.1) -> bool:
    """Wait up to ``timeout`` seconds until none of ``pids`` is alive; True when all are gone."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Managed:
    """A process started by :func:`spawn` (``process`` set) or found again from a record
    (``process`` None): the leader of its own process group."""

    pid: int
    process: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        """Whether the group leader still runs."""
        if self.process is not None:
            return self.process.poll() is None
        return pid_alive(self.pid)

    def stop(
        self,
        timeout: float = 10.0,
        *,
        term_pid: int | None = None,
        sig: int = signal.SIGTERM,
    ) -> None:
        """End the process group: ``sig`` to ``term_pid`` (a process of the group that shuts
        the rest down itself, e.g. TorchServe's frontend) or else to the whole group; wait up
        to ``timeout`` seconds for it and the leader to exit; then ``SIGKILL`` to whatever is
        left in the group, and reap the leader when this process started it."""
        if self.pid <= 1:
            return
        if term_pid is not None:
            if pid_alive(term_pid):
                send_signal(term_pid, sig)
        elif self.alive():
            signal_group(self.pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (pid_alive(term_pid) or self.alive()):
            time.sleep(0.1)
        signal_group(self.pid, signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)


def spawn(
    cmd: Sequence[str],
    *,
    cwd: Path,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> Managed:
    """Start ``cmd`` in ``cwd`` as the leader of a new session (its own process group, so a
    Ctrl-C in the terminal reaches only the launcher, which stops it in order), stdin closed,
    stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Managed(pid=process.pid, process=process)


def write_record(path: Path, state: Mapping[str, Any]) -> None:
    """Write the JSON record ``state`` (pids, options, URLs) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(state), indent=2))


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON record at ``path``; None when there is none (or it cannot be read)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def remove_record(path: Path) -> None:
    """Remove the record at ``path`` (fine when it is already gone)."""
    path.unlink(missing_ok=True)
