"""``python -m pipeline.data``: write FFCV files, inspect them, list datasets.

    python -m pipeline.data write DATASET --root ROOT --out DIR [--max-res 256]
        [--jpeg-quality 90] [--compress-prob 0.5] [--write-mode auto] [--workers N] [--force]
        [--format beton|jpeg]
    python -m pipeline.data info DIR
    python -m pipeline.data list

Bad input (a bad flag value, a missing or unreadable path, a file where a folder belongs, a
damaged or non-UTF-8 manifest, an unreadable source image) prints ``error: <one line>``
naming the flag or path and exits 2; nothing already written is touched, and a failed write
leaves no lock or empty folder behind.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from pipeline.errors import ArgumentParser

# pydantic field -> the flag that sets it, so errors name what the user typed
_FLAGS = {"max_res": "--max-res", "jpeg_quality": "--jpeg-quality",
          "compress_prob": "--compress-prob", "write_mode": "--write-mode",
          "workers": "--workers", "root": "--root", "beton_dir": "--out", "dataset": "dataset",
          "synthetic.num_classes": "--num-classes", "synthetic.image_size": "--image-size",
          "synthetic.train_count": "--train-count", "synthetic.val_count": "--val-count",
          "synthetic.seed": "--seed"}


class _Parser(ArgumentParser):
    """The project's parser (no abbreviations, no flag twice); a usage error reads
    ``error: prog: what``, exit 2."""

    def error(self, message):  # noqa: D102 - argparse's hook
        print(f"error: {self.prog}: {' '.join(message.split())} (see --help)", file=sys.stderr,
              flush=True)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pipeline.data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    w = sub.add_parser("write", help="write train.beton, val.beton and manifest.json")
    w.add_argument("dataset")
    w.add_argument("--root", help="dataset folder (not needed for digits, synthetic)")
    w.add_argument("--out", required=True, help="output folder")
    w.add_argument("--max-res", type=int, default=256, help="longest stored side (default 256)")
    # None: not given (a flag given for a write it does not apply to is refused, not ignored)
    w.add_argument("--jpeg-quality", type=int, default=None, help="JPEG quality (default 90)")
    w.add_argument("--compress-prob", type=float, default=None,
                   help="share of images stored as JPEG in 'proportion' mode (default 0.5)")
    w.add_argument("--write-mode", default=None, choices=["auto", "raw", "jpg", "proportion"],
                   help="beton files: auto (default): raw for small fixed-size images, else proportion")
    w.add_argument("--workers", type=int, default=None, help="writer processes")
    w.add_argument("--force", action="store_true", help="rewrite even if up to date")
    w.add_argument("--format", default="beton", choices=["beton", "jpeg"],
                   help="beton: FFCV files; jpeg: a resized JPEG copy for the torch backend "
                        "(data.jpeg_dir)")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.add_argument("--on-cluster", action="store_true",
                   help="run the write as a Ray task on a node of the cluster in RAY_ADDRESS that has --root "
                        "(--out: a folder on the cluster's shared storage)")
    g = w.add_argument_group("synthetic dataset")
    g.add_argument("--num-classes", type=int)
    g.add_argument("--image-size", type=int)
    g.add_argument("--train-count", type=int)
    g.add_argument("--val-count", type=int)
    g.add_argument("--seed", type=int)
    i = sub.add_parser("info", help="print a beton folder's manifest summary")
    i.add_argument("dir")
    sub.add_parser("list", help="list the registered datasets")
    return p


def _write_config(args):
    """The flags of ``write`` as a :class:`DataConfig` (a bad value: ConfigError naming its flag);
    nothing on disk is looked at."""
    from pipeline.config import DataConfig
    from pipeline.errors import ConfigError

    synth = {k: getattr(args, k) for k in ("num_classes", "image_size", "train_count",
                                             "val_count", "seed") if getattr(args, k) is not None}
    if synth and args.dataset != "synthetic":
        raise ConfigError(f"--{next(iter(synth)).replace('_', '-')}: only for the synthetic dataset")
    if not args.out.strip():
        raise ConfigError("--out: the path is empty")
    if args.workers == 0:  # a loader's 0 (the main process) means nothing to a writer
        raise ConfigError("--workers 0: a write needs at least one writer process (leave the flag out for "
                          "the default)")
    kw = dict(dataset=args.dataset, root=args.root, beton_dir=args.out, max_res=args.max_res, workers=args.workers)
    kw.update({k: getattr(args, k) for k in ("jpeg_quality", "compress_prob", "write_mode")
               if getattr(args, k) is not None})
    if synth:
        kw["synthetic"] = synth
    cfg = _data_config(DataConfig, kw)
    from pipeline.catalog import info as catalog_info

    if args.root is not None and not catalog_info(cfg.dataset).needs_root:
        raise ConfigError(f"--root: {cfg.dataset} is built in, it reads no folder; leave --root out")
    if args.format == "jpeg":
        _unused_flags(args, {"jpeg_quality"}, "--format jpeg (a JPEG copy)")
    elif cfg.write_mode != "auto":
        _unused_flags(args, {"write_mode", *_policy_keys(cfg.write_mode)}, f"--write-mode {cfg.write_mode}")
    return cfg


def _policy_keys(mode: str) -> tuple[str, ...]:
    """The flags a beton write in ``mode`` reads (besides --max-res)."""
    return {"raw": (), "jpg": ("jpeg_quality",), "proportion": ("jpeg_quality", "compress_prob")}[mode]


def _unused_flags(args, used: set[str], what: str) -> None:
    """A ConfigError for the first of --jpeg-quality/--compress-prob/--write-mode given although
    the write ``what`` does not read it."""
    from pipeline.errors import ConfigError

    for k in ("write_mode", "jpeg_quality", "compress_prob"):
        if getattr(args, k) is not None and k not in used:
            raise ConfigError(f"--{k.replace('_', '-')} does not apply to {what}; leave it out")


def _write(args) -> int:
    from . import get_dataset, load_source
    from .plan import default_workers
    from .write import resolve_policy, write_betons

    cfg = _write_config(args)
    if cfg.root is not None and cfg.beton_dir is not None and cfg.beton_dir.is_relative_to(cfg.root):
        from pipeline.errors import ConfigError

        raise ConfigError(f"--out {cfg.beton_dir} lies inside --root {cfg.root}: the written files would become "
                          "part of the dataset they are made from; give a folder outside it")
    entry = get_dataset(cfg.dataset)
    source = load_source(cfg)
    workers = cfg.workers or default_workers()
    if args.format == "jpeg":
        from .jpeg_store import jpeg_policy, write_jpeg_store

        res = write_jpeg_store(entry, source, jpeg_policy(cfg), cfg.beton_dir, force=args.force,
                               workers=workers, progress=not args.quiet)
    else:
        policy = resolve_policy(cfg, source)
        if cfg.write_mode == "auto":  # known now, from the images
            _unused_flags(args, {"write_mode", *_policy_keys(policy["write_mode"])},
                          f"write mode {policy['write_mode']} (auto, for these images)")
        res = write_betons(entry, source, policy, cfg.beton_dir,
                           force=args.force, workers=workers, progress=not args.quiet)
    m = res.manifest
    verb = "wrote" if res.written else "up to date (use --force to rewrite):"
    print(f"{verb} {res.folder}  {cfg.dataset}  train {m['counts']['train']}  val "
          f"{m['counts']['val']}  classes {m['num_classes']}  {m['policy']}  "
          f"fingerprint {m['fingerprint'][:16]}")
    return 0


def _data_config(cls, kw: dict):
    """``DataConfig(**kw)``, a validation error renamed to the flags that were given."""
    from pydantic import ValidationError

    from pipeline.errors import ConfigError

    try:
        return cls(**kw)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()))
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{_FLAGS.get(loc, loc)}: {msg}" if loc else msg)
        raise ConfigError("; ".join(parts)) from None


def _info(args) -> int:
    from pipeline.config import abs_path
    from pipeline.errors import ConfigError

    from . import store

    if not str(args.dir).strip():
        raise ConfigError("info: the path is empty")
    folder = abs_path(args.dir)
    try:
        m = store.read_manifest(folder)
    except ConfigError as e:
        if "not an attnlab beton manifest" not in str(e):
            raise
        from .jpeg_store import check

        m = store.read_manifest(folder, store.JPEG_FORMAT)
        check(folder, m)
    else:
        if m is None:
            raise ConfigError(f"{folder}: no {store.MANIFEST} (not a complete beton folder)")
        store.verify(folder, m)
    out = {k: m.get(k) for k in ("format", "dataset", "fingerprint", "num_classes", "counts",
                                 "policy", "image_size", "style", "written_at")}
    out["files"] = m["files"]
    print(json.dumps(out, indent=2))
    return 0


def _list(_args) -> int:
    from .registry import get, names

    for n in names():
        e = get(n)
        print(f"{n:14s} {'root' if e.needs_root else 'built-in':8s} {e.description}")
    return 0


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds like an error: locks and partial files go


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from pipeline.errors import cli_exit

    if args.cmd == "write" and args.on_cluster:
        from pathlib import Path

        from .on_cluster import write_on_cluster

        raw = list(sys.argv[1:] if argv is None else argv)
        here = [a for a in raw if a != "--on-cluster"]
        try:  # the flags here, before Ray is joined (the node checks the paths)
            from pipeline.preflight import ray_address_problem

            _write_config(args)
            if os.environ.get("RAY_ADDRESS", "local").strip() == "local":
                raise ValueError("--on-cluster: set RAY_ADDRESS to the cluster (without it, or with 'local', this "
                                 "machine would start a Ray of its own)")
            if problem := ray_address_problem():
                raise ValueError(problem)
        except ValueError as e:
            cli_exit(e)
        try:  # paths as the user typed them are relative to this machine's working directory
            for i, item in enumerate(here):
                for flag in ("--root", "--out"):
                    if item == flag and i + 1 < len(here):
                        here[i + 1] = str(Path(here[i + 1]).expanduser().absolute())
                    elif item.startswith(flag + "="):
                        here[i] = f"{flag}={Path(item[len(flag) + 1:]).expanduser().absolute()}"
            return write_on_cluster(here, str(Path(args.root).expanduser().absolute()) if args.root else None,
                                    cpus=float(args.workers or 1))
        except ValueError as e:
            cli_exit(e)
    if args.cmd == "write":
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return {"write": _write, "info": _info, "list": _list}[args.cmd](args)
    except KeyboardInterrupt:
        print("interrupted: nothing was committed", file=sys.stderr)
        return 130
    except ValueError as e:  # ConfigError, pydantic's ValidationError, UnicodeDecodeError
        cli_exit(e)
    except KeyError as e:  # an unknown dataset name
        cli_exit(ValueError(str(e)))
    except OSError as e:  # a path the OS refuses: not a folder, no permission, disk full
        where = e.filename if e.filename is not None else "I/O"
        cli_exit(ValueError(f"{where}: {e.strerror or type(e).__name__}"))
    except MemoryError:
        cli_exit(ValueError("out of memory (a count or size too large for this machine?)"))


if __name__ == "__main__":
    sys.exit(main())
