"""``python -m pipeline.data write ... --on-cluster``: the write runs as one Ray task on a node
that holds the data (``--root`` is a folder there), writing into ``--out`` — a folder on the
cluster's shared storage, where every trial's pre-flight will look for the prepared files.

The task's output (the writer's progress lines) streams back to this terminal through Ray.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def _has_folder(path: str) -> bool:
    return Path(path).is_dir()


def _write_task(argv: list[str]) -> int:
    from pipeline.data.__main__ import main

    try:
        return int(main(argv) or 0)
    except SystemExit as e:  # the CLI's own exit codes (2: bad input)
        return int(e.code or 0)


def write_on_cluster(argv: list[str], root: Optional[str], cpus: float = 1.0) -> int:
    """Run ``python -m pipeline.data <argv>`` on a node where ``root`` exists (any node when the
    dataset needs no root); returns the writer's exit code."""
    from pipeline.errors import ConfigError
    from pipeline.tune import alive_nodes, connect, node_ids_where, run_on_node

    connect()
    if root:
        found = node_ids_where(_has_folder, root)
        if not found:
            raise ConfigError(f"--root {root}: no node of the cluster has this folder "
                              f"({len(alive_nodes())} node(s) alive)")
    else:
        found = [(n["NodeID"], f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})") for n in alive_nodes()]
    node_id, label = found[0]
    print(f"pipeline.data: writing on node {label}", flush=True)
    return run_on_node(_write_task, argv, node_id, num_cpus=cpus)
