"""Logging for workflow scripts: to the rule's log file and to stderr, plus an ETA progress line."""

import logging
import sys
import time

from deepbc.errors import UserError

LOG = logging.getLogger("deepbc")


def setup(log_file: str | None = None, level: int = logging.INFO) -> logging.Logger:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level)
    return LOG


def run_main(main, argv=None) -> int:
    """Run a script's main; a UserError becomes a clear message and exit code 1, not a traceback."""
    try:
        main(argv)
    except UserError as err:
        LOG.error("%s", err)
        return 1
    return 0


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
