"""The one way a workflow script starts: its parser, logging to --log and stderr, its exit code.

A rule passes each config section a script needs as one JSON option (``--shards-json``, the
section ``shards`` as validated, defaults filled in) and single top-level values (seed, threads,
paths) as options of their own. A script declares its arguments and the one package function it
calls::

    main = cli.script(__doc__, arguments, run)

    if __name__ == "__main__":
        cli.run(main)

``main(argv)`` raises on failure (tests call it in-process); ``cli.run`` turns a failure into its
logged message and exit code 1 (deepbc.jobs.logs.run_main).
"""

import argparse
import functools
import json
import os
import sys

from deepbc.jobs import logs
from deepbc.jobs.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is a UserError, which run_main writes to the job's log file
    too (argparse itself prints to stderr only and exits)."""

    def error(self, message):
        raise UserError(f"bad command line: {message}", self.prog, f"see {self.prog} --help")


def script(doc: str, arguments, body):
    """A script's ``main(argv)``: parse ``argv`` with the options ``arguments(parser)`` adds (plus
    --log), log to --log and stderr, then run ``body(args)``."""

    def main(argv=None, script: bool = False):
        parser = _Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        arguments(parser)
        parser.add_argument("--log", default=None, help="log file (appended)")
        args = parser.parse_args(argv)
        logs.setup(args.log, script=script)
        body(args)

    return main


def run(main) -> None:
    """Run a script's main on the command line and exit with its code (0, or 1 after logging why);
    its stderr goes to its log file, the console gets warnings, errors and progress (deepbc.jobs.logs).
    The log's last line is what the job used (logs.log_usage)."""
    try:
        code = logs.run_main(functools.partial(main, script=True))
    finally:  # also when interrupted
        logs.log_usage()
    sys.exit(code)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (worker processes, threads)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def job_cpus(text: str) -> int:
    """An argparse type: a job's threads, at most the CPUs it was given.

    The rule's ``threads`` (0: every CPU the job may use), capped at SLURM's allocation
    (SLURM_CPUS_PER_TASK) and at the process's CPU affinity: TensorFlow's thread pools and the
    input pipeline then match the CPUs the job has, not a number written in a config.
    """
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (every CPU given) or more, got {value}")
    given = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1]
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        given.append(int(slurm))
    return min([*given, value]) if value else min(given)


def config_section(section: str, pointer: str | None = None):
    """An argparse type: the JSON of the config section ``section`` (a dotted key), whole or in part:
    the schema fills in its defaults and checks it (``deepbc.jobs.schema.fill``; ``pointer``: where it is
    in the schema, by default ``/properties/<section>``), so a script run alone gets the workflow's values."""
    from deepbc.jobs import schema

    where = pointer or f"/properties/{section}"

    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"not valid JSON ({err}): pass the config section {section} "
                                             "as a JSON object") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"the config section {section} must be a JSON object")
        try:
            return schema.fill(value, where, where=f"config section {section}")
        except UserError as err:
            raise argparse.ArgumentTypeError(f"{err.what} ({err.where}; see config/schema.yaml)") from None

    parse.section, parse.pointer = section, where
    return parse
