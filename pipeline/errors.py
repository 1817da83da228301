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


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with a one-line error, ``prog: error: what (see prog
    --help)``, exit 2 — the usage block is for ``--help``, not for a typo.

    Use it for every CLI of the project so all of them fail the same way.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_flat(message)} (see {self.prog} --help)\n")

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
