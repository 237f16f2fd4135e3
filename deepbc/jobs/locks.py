"""Exclusive locks held by a process: a job's folder, a GPU.

A lock is an flock on a file: the kernel releases it when the holder ends or dies, so a killed job
never keeps one. The holder writes its pid, host and command line into the file, so that a process
that finds the lock taken can say who holds it. The file is left in place on release: removing it
would let a waiting process lock the removed file while a newcomer locks a new one.
"""

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from deepbc.jobs.errors import UserError

LOG = logging.getLogger("deepbc.jobs.locks")


def try_lock(path):
    """An open handle holding the exclusive lock on ``path``, or None if another process holds it."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "cmdline": " ".join(sys.argv)[:500]}) + "\n")
    handle.flush()
    return handle


def release(handle) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def holder(path) -> str:
    """Who holds the lock on ``path``, as its holder recorded it."""
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return "another process (it has not recorded its pid yet)"
    return f"pid {info.get('pid')} on host {info.get('host')} (command: {info.get('cmdline')})"


def lock_path(target) -> Path:
    """The lock file of a folder or output file: hidden, next to it, outside what rules delete."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def exclusive(target, what: str, timeout: float = 0.0, poll: float = 1.0):
    """Hold the lock of ``target`` for the block; wait up to ``timeout`` s for another holder."""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    handle = try_lock(path)
    if handle is None:
        LOG.warning("%s is locked by %s; waiting up to %.0f s for it to end", target, holder(path), timeout)
    while handle is None:
        if time.monotonic() >= deadline:
            raise UserError(f"another process is working on {what}: {holder(path)}", str(target),
                            "wait for it to finish, or stop it (kill PID) if it is left over from a killed "
                            "run, then rerun")
        time.sleep(poll)
        handle = try_lock(path)
    try:
        yield
    finally:
        release(handle)


def add_arguments(parser) -> None:
    parser.add_argument("--lock-timeout", type=float, default=24 * 3600,
                        help="seconds to wait for another process working on the same output (default a day)")
