"""The one way a workflow script starts: its parser, logging to --log and stderr, its exit code.

A script declares its arguments and the one package function it calls::

    main = cli.script(__doc__, arguments, run)

    if __name__ == "__main__":
        cli.run(main)

``main(argv)`` raises on failure (tests call it in-process); ``cli.run`` turns a failure into its
logged message and exit code 1 (deepbc.logs.run_main).
"""

import argparse
import sys

from deepbc import logs


def script(doc: str, arguments, body):
    """A script's ``main(argv)``: parse ``argv`` with the options ``arguments(parser)`` adds (plus
    --log), log to --log and stderr, then run ``body(args)``."""

    def main(argv=None):
        parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
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
