"""``python -m experiments.claims {list,validate,check,sync}`` — see experiments/claims/__init__.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from pipeline.errors import ArgumentParser, ConfigError, cli_exit

from . import EXPERIMENT, check_structural, load_claims, sync


def _uri(arg: Optional[str]) -> str:
    uri = arg or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError("give --tracking-uri (or set MLFLOW_TRACKING_URI), e.g. http://127.0.0.1:5000")
    return uri


def main(argv: Optional[list[str]] = None) -> int:
    p = ArgumentParser(prog="python -m experiments.claims",
                                description="The claims registry: published figures, checked and synced to MLflow.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, helptext in (("list", "every claim, one line each"), ("validate", "schema check (one line per error)"),
                           ("check", "structural claims: build the models and count"),
                           ("sync", "write the claims into MLflow (one run per claim; idempotent)")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("files", nargs="*", help="claim files (default: experiments/claims/*.yaml)")
        if name == "sync":
            s.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
            s.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment (default {EXPERIMENT!r})")
    a = p.parse_args(argv)
    for f in a.files:  # Path("") would be the current folder
        p.refuse_blank("a claims file path", f, "give a claims file (or none for the registry's)")
    a.files = [Path(f) for f in a.files]
    seen = [f.resolve() for f in a.files]
    twice = next((f for i, f in enumerate(a.files) if seen[i] in seen[:i]), None)
    if twice is not None:  # every claim of it would be reported as a duplicate id
        p.error(f"claims file {twice} is given twice: give each file once")
    if a.cmd == "sync":
        p.refuse_blank("--tracking-uri", a.tracking_uri, "give the URI (leave the flag out for $MLFLOW_TRACKING_URI)")
    if a.cmd == "sync" and not 0 < len(a.experiment.strip()) <= 500:
        p.error(f"--experiment {a.experiment[:40]!r}: an MLflow experiment name is 1..500 characters")
    try:
        claims, _ = load_claims(a.files or None)
        if a.cmd == "validate":
            print(f"{len(claims)} claims OK")
            return 0
        if a.cmd == "list":
            for lc in claims:
                c = lc.claim
                print(f"{lc.where}  {c.id}  [{c.kind}, {c.status}]  {c.title}")
            return 0
        if a.cmd == "check":
            results = check_structural(claims)
            for r in results:
                print(f"{'HOLDS' if r.holds else 'OFF  '}  {r.id}: {r.text}")
            off = sum(not r.holds for r in results)
            print(f"\n{len(results) - off}/{len(results)} structural claims hold; {off} do not (reported above as they are)")
            return 0
        from pipeline.tracking import check_store, ui_url

        uri = _uri(a.tracking_uri)
        check_store(uri)
    except ConfigError as e:
        cli_exit(e)
    out = sync(uri, claims, a.experiment, files=a.files or None)
    counts = ", ".join(f"{len(v)} {k}" for k, v in out.items())
    print(f"claims → MLflow {uri} experiment {a.experiment!r}: {counts}")
    for action in ("created", "updated", "replaced", "removed"):
        for key in sorted(out[action]):
            print(f"  {action:8s} {key}")
    print(f"open: {ui_url(uri, a.experiment)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
