"""Errors shared by the pipeline's CLIs: bad input is one line per problem on stderr, exit code 2.

* :class:`ConfigError` — bad user input; one problem, or several found in one pass (a spec
  file reports all its problems at once, one line each, each with its ``file:line``).
* :func:`cli_exit` — print ``error: <line>`` per problem and exit 2; never a traceback.
* :class:`ArgumentParser` — argparse whose usage errors are one line plus a pointer to
  ``--help`` (argparse's own prints the whole usage block first), exit 2.
* :func:`int_range`, :func:`float_range`, :func:`int_list` — argparse ``type`` checks: a value out
  of range is the parser's one-line usage error, before any work.
* :func:`folder_problem` — what stops a folder the user named from being used (made if missing);
  :func:`file_problem` — the same for a file a command will write; :func:`path_flag_problem` —
  either check on a path flag as typed (an empty one is the current folder: refused);
  :func:`url_problem` — what is wrong with a URL's host and port.
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, NoReturn, Optional


class ConfigError(ValueError):
    """Bad user input (a config value, a path, a dataset layout).

    Each problem is one line that names the offending field or path (``file:line: key: what``
    for spec files).  ``ConfigError("one")`` holds one problem; :meth:`many` holds several, and
    ``str()`` is then one line per problem.
    """

    def __init__(self, message: str = "", *more: object) -> None:
        super().__init__(message, *more)
        # one problem per line of the message (so the error survives pickling by its args)
        self.problems: list[str] = [_flat(p) for p in str(message).splitlines() if p.strip()]

    @classmethod
    def many(cls, problems: Iterable[str]) -> "ConfigError":
        """One error carrying several problems (one line each, in the order given)."""
        return cls("\n".join(_flat(p) for p in problems))

    def __str__(self) -> str:
        return "\n".join(self.problems) if self.problems else super().__str__()


def _flat(text: object) -> str:
    return " ".join(str(text).split())


def _lines(err: BaseException) -> list[str]:
    if isinstance(err, ConfigError) and err.problems:
        return list(err.problems)
    errors = getattr(err, "errors", None)
    if callable(errors):  # pydantic.ValidationError, without importing pydantic here
        try:
            items = errors()
        except Exception:  # pragma: no cover - not a pydantic error after all
            items = None
        if items:
            parts = []
            for e in items:
                loc = ".".join(str(p) for p in e.get("loc", ()))
                msg = str(e.get("msg", "")).removeprefix("Value error, ")
                parts.append(f"{loc}: {msg}" if loc else msg)
            return ["; ".join(_flat(p) for p in parts)]
    return [_flat(err) or type(err).__name__]


def cli_exit(err: BaseException, code: int = 2) -> NoReturn:
    """Print ``error: <line>`` to stderr for each problem in ``err`` and exit with ``code``
    (2: bad input)."""
    for line in _lines(err):
        print(f"error: {line}", file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(code)


#: Flags that may be given more than once: each occurrence adds to the value.
_COLLECTING = (argparse._AppendAction, argparse._AppendConstAction, argparse._CountAction, argparse._ExtendAction)


def unknown_flag_message(name: str, valid: Iterable[str]) -> str:
    """``unknown flag --backb (did you mean --backbone?)``: the suggestion where one is close."""
    close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.75)
    return f"unknown flag {name}" + (f" (did you mean {close[0]}?)" if close else "")


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with four changes, so that no flag is read differently from
    what was typed.  Use it for every CLI of the project so all of them fail the same way.

    * A usage error is one line, ``prog: error: what (see prog --help)``, exit 2 — the usage
      block is for ``--help``, not for a typo.
    * No abbreviations: ``--ou`` is not ``--out`` (argparse's ``allow_abbrev`` is off), so a flag
      that a wrapper strips or rewrites by its full name cannot slip through in a shorter form.
    * An unknown flag is the error, with the closest valid one where there is one (argparse
      reported it after its check of required flags: ``--backb`` read "--backbone is required").
    * A flag given twice is an error naming it (argparse keeps the last value silently), except
      flags that collect (``append``, ``extend``, ``count``).  Tokens after ``--`` and after a
      sub-command's name are not this parser's: a sub-command's parser checks its own.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_flat(message)} (see {self.prog} --help)\n")

    def repeated_flag(self, argv: Iterable[str]) -> Optional[str]:
        """The error for the first flag of this parser given twice in ``argv``, or None."""
        by_name = {s: a for a in self._actions for s in a.option_strings}
        commands = {c for a in self._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices}
        first: dict[str, str] = {}  # dest -> the spelling seen first
        for tok in argv:
            if tok == "--" or tok in commands:
                break
            name = tok.split("=", 1)[0] if tok.startswith("--") else tok
            action = by_name.get(name)
            if action is None or isinstance(action, _COLLECTING):
                continue
            seen = first.get(action.dest)
            if seen is None:
                first[action.dest] = name
                continue
            both = f"{name} given twice" if seen == name else f"{seen} and {name} both given (they set the same thing)"
            return f"{both}: give it once"
        return None

    def unknown_flag(self, argv: Iterable[str]) -> Optional[str]:
        """The error for the first token of ``argv`` that looks like a flag and is none of this
        parser's (a sub-command's tokens checked by its parser), or None.  argparse would report
        it only after its required-flag check, so ``--backb x`` was "--backbone is required"."""
        by_name = {s for a in self._actions for s in a.option_strings}
        commands = {c: sub for a in self._actions if isinstance(a, argparse._SubParsersAction)
                    for c, sub in a.choices.items()}
        argv = list(argv)
        for i, tok in enumerate(argv):
            if tok == "--":
                return None
            if tok in commands:
                sub = commands[tok]
                return sub.unknown_flag(argv[i + 1:]) if isinstance(sub, ArgumentParser) else None
            if not tok.startswith("-") or tok == "-" or self._negative_number_matcher.match(tok):
                continue
            name = tok.split("=", 1)[0] if tok.startswith("--") else tok[:2]
            if name not in by_name:
                return unknown_flag_message(name, by_name)
        return None

    def _checked(self, args, check: Callable[[list[str]], Optional[str]]) -> list[str]:
        """``args`` (default: the command line) as a list, after ``check`` found nothing wrong."""
        argv = list(sys.argv[1:] if args is None else args)
        problem = check(argv)
        if problem:
            self.error(problem)
        return argv

    def parse_args(self, args=None, namespace=None):  # noqa: D102 - argparse's entry point
        return super().parse_args(self._checked(args, self.unknown_flag), namespace)

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 - argparse's entry point
        return super().parse_known_args(self._checked(args, self.repeated_flag), namespace)

    def refuse_blank(self, flag: str, value: Optional[str], hint: str) -> None:
        """The one-line error for a flag given as empty or blank (``--storage " "``: it would
        silently be the current folder or the default), naming the value as typed."""
        if value == "":
            self.error(f"{flag} '' is empty: {hint}")
        if value is not None and not value.strip():
            self.error(f"{flag} is blank (only whitespace, {len(value)} character(s)): {hint}")

    def exit(self, status: int = 0, message: Optional[str] = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
            sys.stderr.flush()
        raise SystemExit(status)


def int_range(lo: int, hi: Optional[int] = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``lo..hi`` (no upper bound when ``hi`` is None).  A
    value out of range is the parser's one-line error naming the flag
    (``argument --batch: must be 1..65,536, got 0``), before any work starts."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {_span(lo, hi)}, got {v:,}")
        return v

    return parse


def name_list(valid: Optional[Iterable[str]] = None, what: str = "name") -> Callable[[str], list[str]]:
    """An argparse ``type``: a non-empty comma list of names, in the order given — each one
    non-blank, none twice, and each one of ``valid`` when given (``--only se,,cbam``,
    ``--only se,se`` and ``--only " "`` are errors, not a shorter list or "all")."""
    choices = None if valid is None else list(valid)

    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",")]
        if not any(items):
            raise argparse.ArgumentTypeError(f"give at least one {what}, got {text!r}")
        if not all(items):
            raise argparse.ArgumentTypeError(f"an empty item in {text!r} (two commas, or one at an end)")
        twice = next((s for i, s in enumerate(items) if s in items[:i]), None)
        if twice is not None:
            raise argparse.ArgumentTypeError(f"{twice!r} is listed twice in {text!r}")
        unknown = [s for s in items if choices is not None and s not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {', '.join(unknown)}; valid: {', '.join(choices)}")
        return items

    return parse


def float_range(lo: float, hi: Optional[float] = None, *, above: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number >= ``lo`` (> ``lo`` with ``above``) and <= ``hi``."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < lo or (above and v == lo) or (hi is not None and v > hi):
            low = f"> {lo:g}" if above else f">= {lo:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {low}" + (f" and <= {hi:g}" if hi is not None
                                                                                 else "") + f", got {text!r}")
        return v

    return parse


def int_list(lo: int, hi: Optional[int] = None) -> Callable[[str], list[int]]:
    """An argparse ``type``: a non-empty comma list of integers, each in ``lo..hi``."""
    one = int_range(lo, hi)

    def parse(text: str) -> list[int]:
        items = [t.strip() for t in text.split(",")]
        if not text.strip() or not all(items):  # "1,,2" is a slip, not [1, 2]
            raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}")
        return [one(t) for t in items]

    return parse


def _span(lo: int, hi: Optional[int]) -> str:
    return f">= {lo:,}" if hi is None else f"{lo:,}..{hi:,}"


def folder_problem(path: Path, create: bool = True) -> Optional[str]:
    """Create ``path`` (and its parents) if missing; ``None`` when it is then a folder this user
    can write, else why not, as the tail of a one-line error (``"not a folder"``,
    ``"cannot be created: /x is a file, not a folder"``, ...).  ``create=False`` judges only
    (the nearest existing folder must be writable), for a check that must leave nothing behind
    if a later check refuses the command."""
    if path.exists():
        if not path.is_dir():
            return "not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else "not writable"
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be created: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be created: {existing} is not writable"
    if not create:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot be created: {e.strerror or e}"
    return None


def file_problem(path: Path) -> Optional[str]:
    """What stops writing the file ``path`` (its folder is made if missing); ``None`` when
    nothing does.  Checked before a long run, not after it."""
    if path.is_dir():
        return "is a folder, not a file"
    if path.exists() and not path.is_file():  # a write into a FIFO blocks, into a device goes nowhere
        return "is not a regular file (a FIFO, a device or a socket): give a file"
    problem = folder_problem(path.parent)
    if problem:
        return f"its folder {path.parent}: {problem}"
    if path.exists() and not os.access(path, os.W_OK):
        return "not writable"
    return None



def path_flag_problem(value: str, check: Callable[[Path], Optional[str]] = file_problem) -> Optional[str]:
    """``check`` (:func:`file_problem` or :func:`folder_problem`) on a path flag's value as typed,
    made absolute; an empty value, which would be the current folder, is a problem of its own."""
    if not value.strip():
        return "the path is empty"
    return check(Path(value).expanduser().resolve())

def url_problem(url: str) -> Optional[str]:
    """What is wrong with the host and port of ``url`` (``scheme://HOST[:PORT]…``), as the tail of
    a one-line error; ``None`` when both are well formed.  Nothing is contacted."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError as e:
        return str(e)
    return None if parts.hostname else "no host"
