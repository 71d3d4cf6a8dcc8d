"""The ``groupvit`` command line: one sub-command per module in :mod:`groupvit.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Errors of type :class:`~groupvit.errors.GroupViTError` print one line on stderr and exit with status 2, storage
faults (:class:`~groupvit.errors.StorageError`, and any full disk or unwritable folder a writer meets) with
status 3; warnings print one line each.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from groupvit.errors import GroupViTError, StorageError
from groupvit.fileio import storage_error

EXIT_STATUS = ("exit status: 0 success; 1 some inputs failed (each named on stderr, the count at the end, the "
               "others written); 2 bad arguments or unreadable weights (one line on stderr naming the problem); 3 a "
               "storage fault: disk full, quota exceeded, an unwritable or vanished folder (one line; the last good "
               "outputs are kept: run again once it is fixed)")

# Command name -> module implementing it (imported only when that command runs).
COMMANDS: dict[str, str] = {
    "demo": "groupvit.commands.demo",
    "convert": "groupvit.commands.convert",
    "export": "groupvit.commands.export",
    "segment": "groupvit.commands.segment",
    "eval": "groupvit.commands.eval",
    "synth": "groupvit.commands.synth",
    "shards": "groupvit.commands.shards",
    "train": "groupvit.commands.train",
    "weights": "groupvit.commands.weights",
    "groups": "groupvit.commands.groups",
    "app": "groupvit.commands.app",
}
# Commands that compute with the model on the CPU take --threads (groupvit.threads); train reads train.threads.
THREADED_COMMANDS = ("demo", "segment", "eval", "groups", "export", "app")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(prog="groupvit", description="GroupViT: segmentation from text supervision",
                                     epilog=EXIT_STATUS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP, epilog=EXIT_STATUS)
        module.add_arguments(command)
        if name in THREADED_COMMANDS:
            add_threads_argument(command)
        command.set_defaults(_run=module.run)
    return parser


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: intra-op CPU threads (default: chosen from the free cores)."""
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="intra-op CPU threads (default 0: the cores this process may use, less those other "
                             "processes keep busy; see groupvit.threads)")


def _apply_threads(args: argparse.Namespace) -> None:
    """Sets the thread count of a threaded command; says so on stderr when it is not one per allowed CPU."""
    from groupvit.threads import apply_threads

    choice = apply_threads(args.threads or None)
    if choice.requested or choice.threads < choice.cpus:
        print(f"groupvit {args.command}: {choice.describe()}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``groupvit`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)

    def one_line(message: Warning | str, *_: object, **__: object) -> None:
        print(f"groupvit {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            if args.command in THREADED_COMMANDS:
                _apply_threads(args)
            return int(args._run(args) or 0)
    except StorageError as err:
        print(f"groupvit {args.command}: error: {err}", file=sys.stderr)
        return 3
    except GroupViTError as err:
        print(f"groupvit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as err:  # a writer that met a storage fault outside atomic_path
        fault = storage_error(err)
        if fault is None:
            raise
        print(f"groupvit {args.command}: error: {fault}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"groupvit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
