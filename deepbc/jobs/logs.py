"""Logging for workflow scripts: to the rule's log file and to stderr, plus an ETA progress line.

The job's log file gets everything. The console, which Snakemake shows for every job of a run,
gets the workflow's warnings and errors, and its progress lines at most every
``CONSOLE_PROGRESS_EVERY`` seconds; a workflow job (``script=True``) also sends whatever else
reaches its stderr (TensorFlow's C++ log, libraries' deprecation warnings) to the log file alone.
"""

import argparse
import errno
import logging
import os
import re
import resource
import sys
import time

from deepbc.jobs import names
from deepbc.jobs.errors import UserError

LOG = logging.getLogger("deepbc")
# ``LOG.info(..., extra=PROGRESS)``: a progress line (step, rate, ETA), shown on the console too.
PROGRESS = {"progress": True}
CONSOLE_PROGRESS_EVERY = 30.0
_IMPORTED = time.monotonic()
# The last line of every job's log (log_usage); deepbc.bench reads it instead of Snakemake's
# benchmark files, whose sampling costs Snakemake CPU (config key benchmark_files).
USAGE = re.compile(r"job resources: wall (?P<wall>[\d.]+) s, CPU (?P<cpu>[\d.]+) s "
                   r"\(user [\d.]+, system [\d.]+\), peak memory (?P<rss>[\d.]+) MB")


class _Formatter(logging.Formatter):
    """Shows the bytes of a file name that is not UTF-8 as ``\\xNN``, as the CSVs do
    (``names.printable``): such a name must never make a message, least of all an error, fail."""

    def format(self, record: logging.LogRecord) -> str:
        return names.printable(super().format(record))


def setup(log_file: str | None = None, level: int = logging.INFO, script: bool = False) -> logging.Logger:
    """Log to ``log_file`` (everything) and the console (see the module docstring).

    ``script``: this process is a workflow job run from the command line (deepbc.jobs.cli.run), whose
    file descriptor 2 then points at the log file, the console keeping a copy of the old one. Not
    for a script's main called in-process (tests): the process's stderr is not its own.
    """
    console_stream = sys.stderr
    if script and log_file:
        console_stream = _stderr_into(log_file)
    console = logging.StreamHandler(console_stream)
    console.addFilter(_ConsoleFilter())
    handlers: list[logging.Handler] = [console]
    if log_file:
        # backslashreplace: any other text UTF-8 cannot hold (a lone surrogate no file name gives) still logs.
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8", errors="backslashreplace"))
    fmt = _Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings as records: to the log file, not the console
    return LOG


def _stderr_into(log_file: str):
    """Point file descriptor 2 at ``log_file`` (appending); return a stream on the old stderr."""
    sys.stderr.flush()
    console = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="backslashreplace", buffering=1)
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.dup2(fd, 2)
    os.close(fd)
    return console


class _ConsoleFilter(logging.Filter):
    """The workflow's warnings and errors, and a progress line at most every CONSOLE_PROGRESS_EVERY s."""

    def __init__(self):
        super().__init__()
        self.last_progress = -float("inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("deepbc"):
            return False
        if record.levelno >= logging.WARNING:
            return True
        if getattr(record, "progress", False) and record.created - self.last_progress >= CONSOLE_PROGRESS_EVERY:
            self.last_progress = record.created
            return True
        return False


def run_main(main, argv=None) -> int:
    """Run a script's main; every failure goes to the log file as well as stderr, exit code 1.

    A UserError becomes its what/where/what-to-do message, a full disk a message saying so, and
    anything else its full traceback.
    """
    try:
        main(argv)
    except Exception as err:
        _ensure_logging(argv)
        if isinstance(err, UserError):
            LOG.error("%s", err)
        elif _disk_full(err):
            LOG.error("%s", UserError(f"no space left on device: {err}",
                                      getattr(err, "filename", None) or "the job's output folder",
                                      "free disk space there (or move results/ to a larger disk) and rerun"))
        else:
            LOG.exception("unexpected error")
        return 1
    return 0


def log_usage() -> None:
    """Log what this job process (and the children it waited for) used since it started: wall and
    CPU time, and the peak resident memory of its largest process (not the sum over processes, as
    Snakemake's benchmark files have it). Free: the kernel counts it (getrusage)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime
    line = (f"job resources: wall {_seconds_since_start():.2f} s, CPU {user + system:.2f} s "
            f"(user {user:.2f}, system {system:.2f}), peak memory {max(own.ru_maxrss, children.ru_maxrss) / 1024:.1f} MB")
    LOG.info("%s", line)


def _seconds_since_start() -> float:
    """Seconds since this process started, in clock ticks since boot (psutil's create_time adds the
    boot time in whole seconds: up to 1 s off); where /proc is missing, since this module's import."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            start_ticks = int(fh.read().rpartition(")")[2].split()[19])  # field 22, starttime
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


def _disk_full(err: Exception) -> bool:
    # TensorFlow reports a full disk in its own error types, with the OS message in the text.
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err)


def _ensure_logging(argv) -> None:
    """A failure before the script set up logging still reaches its --log file."""
    if logging.getLogger().handlers:
        return
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--log")
    log_file = parser.parse_known_args(sys.argv[1:] if argv is None else argv)[0].log
    try:
        setup(log_file)
    except OSError:
        setup(None)


class Progress:
    """Logs 'done/total, rate, ETA' at most every ``every`` seconds."""

    def __init__(self, total: int, what: str, unit: str = "items", every: float = 5.0):
        self.total, self.what, self.unit, self.every = total, what, unit, every
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, n: int = 1, **extra) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            LOG.info("%s", self.line(now, **extra), extra=PROGRESS)

    def line(self, now: float | None = None, **extra) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        fields = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
        return (f"{self.what}: {self.done}/{self.total} {fields} {rate:.1f} {self.unit}/s "
                f"ETA {format_seconds(eta)}").replace("  ", " ")


def format_seconds(s: float) -> str:
    if s == float("inf"):
        return "?"
    s = int(round(s))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
