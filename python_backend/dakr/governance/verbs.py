"""Registration of the change-control verbs; their code is imported only when one runs."""

from __future__ import annotations

import argparse
from typing import Callable

from dakr.governance import ACTIVATION_MODES


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from dakr.governance import commands

        return getattr(commands, name)(args)

    return run


def add_activate_option(parser: argparse.ArgumentParser) -> None:
    """``--activate`` of ``dakr adapt``: override the policy's activation for one run."""
    parser.add_argument(
        "--activate",
        choices=ACTIVATION_MODES,
        help="override the policy for this run: never, if-accepted, or always (activates even a held "
        "version; recorded as an override). Default: the policy (auto_activate)",
    )


def add_verbs(verb: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the change-control verbs with the ``verb(name, handler, help)`` helper of the CLI."""
    sub = verb("policy", _lazy("cmd_policy"), "show or change the acceptance policy (each change is a new version)")
    sub.add_argument("store")
    sub.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. margin=1.5 or auto_activate=false (repeatable)")
    for name, handler, text in (
        ("approve", _lazy("cmd_approve"), "approve a version (e.g. one held by the gate) and activate it"),
        ("reject", _lazy("cmd_reject"), "reject a version; it is never activated unless approved later"),
    ):
        sub = verb(name, handler, text)
        sub.add_argument("store")
        sub.add_argument("version", type=int)
        sub.add_argument("--reason", required=True, help="why (kept in the version's change record)")
        sub.add_argument("--by", help="who signs off")
    sub = verb("record", _lazy("cmd_record"), "print the change record of a version")
    sub.add_argument("store")
    sub.add_argument("version", type=int)
    sub.add_argument("--json", action="store_true", help="machine-readable JSON")
