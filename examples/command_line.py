"""The examples' shared command line: a dataclass config read from ``--flag value`` options.

Each field of an example's config is made with :func:`opt`, whose help text doubles as the
field's comment. :func:`parse_config` gives every field a flag (``n_layer`` -> ``--n-layer``, a
``bool`` field a switch) with its default in ``--help``, and refuses a bad value before any work:
one line on stderr naming the flag, exit code 2, no usage block.

The examples import it as ``command_line``: ``python examples/<name>.py`` puts ``examples/`` first
on ``sys.path``, and the tests add it through pytest's ``pythonpath`` setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import field


def opt(default, help: str, parse=None, **argument):
    """A config field: its ``--help`` text, the function reading its value (default: the
    annotation's ``int``/``float``/``str``) and any other ``add_argument`` keyword (``choices=``,
    ``metavar=``)."""
    return field(default=default, metadata={"help": help, "parse": parse, "argument": argument})


def within(kind: type, low: float, high: float = math.inf, *, closed: bool = True, what: str):
    """An argparse ``type=``: a finite ``kind`` in ``[low, high)`` (``(low, high)`` if not ``closed``);
    anything else is refused as ``must be <what>, got <text>``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not (math.isfinite(value) and (low <= value if closed else low < value) and value < high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


def positive(kind: type):
    """A finite ``kind`` greater than 0."""
    return within(kind, 1, what="positive") if kind is int else within(kind, 0, closed=False, what="positive")


def non_negative(kind: type):
    """A finite ``kind`` of at least 0."""
    return within(kind, 0, what="non-negative")


def fail(prog: str, message: str):
    """Bad input found after parsing: one line ``<prog>: error: <message>`` on stderr, exit code 2,
    as argparse's own errors."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class OneLineParser(argparse.ArgumentParser):
    """Bad input: one line on stderr naming the option, exit code 2, no usage block."""

    def error(self, message: str):
        fail(self.prog, message)


_KINDS = {"int": (int, "N"), "float": (float, "X")}


def parse_config(config: type, argv: list[str] | None, *, prog: str, description: str):
    """``config`` (a dataclass made with :func:`opt` fields) read from ``argv`` (default: ``sys.argv``).

    Raises:
        SystemExit: code 2 after one line ``<prog>: error: argument --flag: ...`` on stderr.
    """
    parser = OneLineParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(config):
        flag, help = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=help)
            continue
        kind, metavar = _KINDS.get(f.type, (str, "PATH"))
        argument = dict(f.metadata["argument"])
        if "choices" not in argument:  # argparse shows the choices where no metavar is given
            argument.setdefault("metavar", metavar)
        parser.add_argument(flag, type=f.metadata["parse"] or kind, default=f.default, help=help, **argument)
    return config(**vars(parser.parse_args(argv)))
