""" "Did you mean" for the parser's own errors: a mistyped recipe name or option gets the nearest right one."""

import argparse
import difflib
from collections.abc import Sequence


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`; did you mean 'X'?` for the choice nearest `word`, or nothing when none is near."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser | None:
    """The parser of `command` under `parser`'s subcommands, if it has one."""
    for action in parser._actions:  # argparse keeps its subparsers only there
        if isinstance(action, argparse._SubParsersAction):
            found = action.choices.get(command)
            return found if isinstance(found, argparse.ArgumentParser) else None
    return None


def check_recipe(parser: argparse.ArgumentParser, argv: Sequence[str], recipes: Sequence[str]) -> None:
    """Exit through `build`'s parser when `build NAME` names no recipe, with the nearest recipe's name."""
    if len(argv) < 2 or argv[0] != "build" or argv[1].startswith("-") or argv[1] in recipes:
        return
    build = subparser(parser, "build") or parser
    build.error(
        f"unknown recipe {argv[1]!r}{did_you_mean(argv[1], recipes)} (recipes: {', '.join(recipes)}; "
        "`segshards build --help` says what each makes)"
    )


def parse_with_hints(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """`parser.parse_args(argv)`, but an unknown option is refused by its command's parser with the
    nearest option that command has."""
    args, extras = parser.parse_known_args(argv)
    if not extras:
        return args
    command = subparser(parser, getattr(args, "command", "") or "") or parser
    options = [s for a in command._actions for s in a.option_strings if s.startswith("--")]
    hints = []
    for word in extras:
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            hints.append(f"{name}{did_you_mean(name, options).replace('; ', ': ', 1)}")
    if not hints:
        command.error(f"unexpected argument{'s' * (len(extras) > 1)}: {' '.join(extras)}")
    command.error(f"unknown option {'; '.join(hints)} (in: {' '.join(extras)}; `--help` lists the options)")
    raise AssertionError("unreachable: error() exits")
