"""Logging for workflow scripts: to the rule's log file and to stderr, plus an ETA progress line."""

import argparse
import errno
import logging
import sys
import time

from deepbc import names
from deepbc.errors import UserError

LOG = logging.getLogger("deepbc")


class _Formatter(logging.Formatter):
    """Shows the bytes of a file name that is not UTF-8 as ``\\xNN``, as the CSVs do
    (``names.printable``): such a name must never make a message, least of all an error, fail."""

    def format(self, record: logging.LogRecord) -> str:
        return names.printable(super().format(record))


def setup(log_file: str | None = None, level: int = logging.INFO) -> logging.Logger:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
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
    return LOG


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
            LOG.info("%s", self.line(now, **extra))

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
