"""The one way a workflow script starts: its parser, logging to --log and stderr, its exit code.

A rule passes each config section a script needs as one JSON option (``--shards-json``, the
section ``shards`` as validated, defaults filled in) and single top-level values (seed, threads,
paths) as options of their own. A script declares its arguments and the one package function it
calls::

    main = cli.script(__doc__, arguments, run)

    if __name__ == "__main__":
        cli.run(main)

``main(argv)`` raises on failure (tests call it in-process); ``cli.run`` turns a failure into its
logged message and exit code 1 (deepbc.logs.run_main).
"""

import argparse
import json
import sys

from deepbc import logs
from deepbc.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is a UserError, which run_main writes to the job's log file
    too (argparse itself prints to stderr only and exits)."""

    def error(self, message):
        raise UserError(f"bad command line: {message}", self.prog, f"see {self.prog} --help")


def script(doc: str, arguments, body):
    """A script's ``main(argv)``: parse ``argv`` with the options ``arguments(parser)`` adds (plus
    --log), log to --log and stderr, then run ``body(args)``."""

    def main(argv=None):
        parser = _Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        arguments(parser)
        parser.add_argument("--log", default=None, help="log file (appended)")
        args = parser.parse_args(argv)
        logs.setup(args.log)
        body(args)

    return main


def run(main) -> None:
    """Run a script's main on the command line and exit with its code (0, or 1 after logging why)."""
    sys.exit(logs.run_main(main))


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (worker processes, threads)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def config_section(section: str, keys):
    """An argparse type: the JSON of the config section ``section``, holding at least ``keys``."""

    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"not valid JSON ({err}): pass the config section {section} "
                                             "as a JSON object") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"the config section {section} must be a JSON object")
        missing = [k for k in keys if k not in value]
        if missing:
            raise argparse.ArgumentTypeError(f"the config section {section} lacks {missing} "
                                             "(see config/schema.yaml)")
        return value

    parse.section, parse.keys = section, tuple(keys)
    return parse
