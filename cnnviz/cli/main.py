"""The parser and the one place where errors meet the user."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import sys
import traceback
import warnings

from .. import __version__
from ..errors import CnnvizError, CnnvizWarning, ScanInterrupted, spell_options
from . import analysis_cmds, model_cmds, optim_cmds, run_cmds, scan_cmds
from .common import add_model_args, add_progress_arg


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="offline demo on bundled photos with a real ImageNet model")
    p.add_argument("--out", default="cnnviz-demo", help="output folder (default: cnnviz-demo)")
    add_model_args(p, default="efficientnet_lite0")
    add_progress_arg(p)
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from ..demo import run_demo as demo
    from .common import use_agg

    use_agg()
    demo(args.out, model_name=args.model, weights=args.weights, progress=not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnviz", description="What do the channels of a convolutional network respond to?")
    parser.add_argument("--version", action="version", version=f"cnnviz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in [add_demo, *model_cmds.COMMANDS, *scan_cmds.COMMANDS, *optim_cmds.COMMANDS,
                *run_cmds.COMMANDS, *analysis_cmds.COMMANDS]:
        add(sub)
    return parser


def _flag_speller(parser: argparse.ArgumentParser, command: str):
    """Spells a library option (``top_k``, ``overwrite=True``) as the command's flag; an option
    the command does not have is spelled as the scan's (a run "scanned with `maxima_dtype=none`"
    reads ``--maxima none``)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {}
    for name in ("scan", command):
        for action in sub.choices[name]._actions:
            if action.option_strings:
                flags[action.dest] = (action.option_strings[-1], action.nargs == 0)
            elif action.dest != "help" and name == command:
                flags[action.dest] = (action.metavar or action.dest.upper(), True)

    def spell(name: str, value: str | None) -> str | None:
        if name not in flags:
            return None
        flag, bare = flags[name]
        return flag if value is None or bare else f"{flag} {value}"

    return spell


@contextlib.contextmanager
def _notes(command: str, spell):
    """cnnviz's warnings (:class:`~cnnviz.errors.CnnvizWarning`) as one ``note:`` line each, the
    options spelled as flags; other warnings as Python shows them."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", CnnvizWarning)
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, CnnvizWarning):
                return previous(message, category, filename, lineno, file, line)
            print(f"cnnviz {command}: note: {spell_options(str(message), spell)}", file=sys.stderr)

        warnings.showwarning = show
        yield


def _drop_stdout() -> None:
    """Send what is left of stdout to /dev/null: the interpreter's last flush at exit would
    otherwise meet the closed pipe again and print a warning."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # no real file (a test's capture)
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    spell = _flag_speller(parser, args.command)
    try:
        with _notes(args.command, spell):
            code = args.func(args)
        sys.stdout.flush()  # a reader that stopped (`cnnviz models | head`) shows here, not at exit
        return code
    except BrokenPipeError:  # the reader has what it wanted: nothing to report
        _drop_stdout()
        return 0
    except ScanInterrupted as exc:
        print(f"\ncnnviz: {exc.message(spell)}", file=sys.stderr)
        return 130
    except CnnvizError as exc:
        print(f"cnnviz {args.command}: error: {exc.message(spell)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ncnnviz {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the machine said no (disk full, permissions, a file gone): not a bug
        where = f": {exc.filename}" if exc.filename else ""
        hint = " (the disk is full: free some space and run the same command again)" \
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        print(f"cnnviz {args.command}: error: {exc.strerror or exc}{where}{hint}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - anything else is a bug: show where it happened
        traceback.print_exc()
        print(f"\ncnnviz {args.command}: this is a bug in cnnviz {__version__}, not something you did; "
              "please report it with the traceback above.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
