"""Submit a command to the local stack's Ray head as a Ray job (what ``make demo`` runs).

    python -m infra.submit [--state DIR] -- python experiments/grid.py --spec SPEC ...

The same as ``ray job submit --address <dashboard> --working-dir . -- CMD`` with the runtime
environment a trial needs: the tracking URI of the stack's MLflow server, telemetry off, and
the commit of the submitted code (``ATTNLAB_GIT_COMMIT``: a job's upload has no ``.git``).
The stack's Ray token reaches ``ray job submit`` through ``RAY_AUTH_TOKEN_PATH``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from infra.stack import DEFAULT_STATE, StackError, _bin, client_env, healthy, state_folder


def submission_env(state: Path, cwd: Path) -> dict[str, str]:
    from pipeline.tracking import git_commit

    env = client_env(state)
    return {"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"], "MLFLOW_DISABLE_TELEMETRY": "true",
            "RAY_USAGE_STATS_ENABLED": "0", "ATTNLAB_GIT_COMMIT": git_commit(cwd)}


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import ArgumentParser, cli_exit

    argv = list(sys.argv[1:] if argv is None else argv)
    p = ArgumentParser(prog="python -m infra.submit", usage="python -m infra.submit [--state DIR] "
                       "[--working-dir DIR] -- COMMAND ...",
                       description="Submit COMMAND as a Ray job to the local stack (its token and address).")
    p.add_argument("--state", default=None, help=f"state folder (default {DEFAULT_STATE})")
    p.add_argument("--working-dir", default=".")
    if "--" not in argv:
        p.parse_args(argv)  # --help, or an unknown flag: the parser's own answer
        p.error("give the command to run after --")
    cut = argv.index("--")
    a = p.parse_args(argv[:cut])
    command = argv[cut + 1:]
    state = state_folder(p, a.state)
    if not a.working_dir.strip() or not Path(a.working_dir).is_dir():
        p.error(f"--working-dir {a.working_dir!r}: not a folder")
    a.working_dir = Path(a.working_dir)
    if not command or not command[0].strip():
        cli_exit(ValueError("no command after --" if not command else
                            f"the command after -- is blank ({command[0]!r}): give the program to run"))
    try:
        if not healthy(state):
            raise StackError(f"no running stack in {state}: start it with `python -m infra.stack up --state {state}`")
        env = dict(os.environ, **client_env(state))
    except StackError as e:
        cli_exit(e)
    runtime_env = {"env_vars": submission_env(state, a.working_dir.resolve())}
    cmd = [_bin("ray"), "job", "submit", "--address", env["RAY_ADDRESS"], "--working-dir", str(a.working_dir),
           "--runtime-env-json", json.dumps(runtime_env), "--"] + command
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
