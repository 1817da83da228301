"""Errors shared by the pipeline's CLIs: bad input is one line per problem on stderr, exit code 2.

* :class:`ConfigError` — bad user input; one problem, or several found in one pass (a spec
  file reports all its problems at once, one line each, each with its ``file:line``).
* :func:`cli_exit` — print ``error: <line>`` per problem and exit 2; never a traceback.
* :class:`ArgumentParser` — argparse whose usage errors are one line plus a pointer to
  ``--help`` (argparse's own prints the whole usage block first), exit 2.
* :func:`folder_problem` — what stops a folder the user named from being used (made if missing).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterable, NoReturn, Optional


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
    """``argparse.ArgumentParser`` with a one-line error: ``prog: error: what``, then
    ``(run prog --help for usage)``, exit 2 — the usage block is for ``--help``, not for a typo.

    Use it for every CLI of the project so all of them fail the same way.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_flat(message)}\n(run {self.prog} --help for usage)\n")

    def exit(self, status: int = 0, message: Optional[str] = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
            sys.stderr.flush()
        raise SystemExit(status)


def folder_problem(path: Path) -> Optional[str]:
    """Create ``path`` (and its parents) if missing; ``None`` when it is then a folder this user
    can write, else why not, as the tail of a one-line error (``"not a folder"``,
    ``"cannot be created: /x is a file, not a folder"``, ...)."""
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
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot be created: {e.strerror or e}"
    return None
