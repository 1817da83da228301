"""Ray Tune, behind one thin adapter we own (with :mod:`pipeline.optuna_search`, the only
modules that import ray).

* :func:`trainable` — a plain function trainable: it takes its config (``{"trial": <TrialConfig
  tree>}``), resumes from Tune's checkpoint when there is one (a retry after a failure, or a
  restored experiment), and reports every epoch with the checkpoint of that epoch.
* :func:`run_grid` — runs a list of trial configs as one Tune experiment with per-trial
  resources (fractional GPUs allowed), retries (``FailureConfig``), a storage path or URI,
  optional ASHA, and ``--resume`` through ``Tuner.restore``.
* :func:`connect` — joins ``RAY_ADDRESS`` (a cluster, or ``ray job submit``) or starts/joins a
  local Ray bound to 127.0.0.1.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import ray
from ray import tune

from .config import validate_trial
from .procs import pid_alive
from .train import CKPT_NAME, fit


def connect(num_cpus: Optional[int] = None) -> str:
    """Join the cluster in ``RAY_ADDRESS``, else start (or join) a local Ray on 127.0.0.1."""
    if ray.is_initialized():
        return "already connected"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # `ray job submit` sets RAY_ADDRESS for the entrypoint; the dashboard's http address
        # is for job submission, the driver joins through the GCS ("auto" finds it).
        if address.startswith("http"):
            address = "auto"
        if "RAY_AUTH_MODE" not in os.environ and (
                os.environ.get("RAY_AUTH_TOKEN_PATH") or os.environ.get("RAY_AUTH_TOKEN")
                or (Path.home() / ".ray" / "auth_token").exists()):
            os.environ["RAY_AUTH_MODE"] = "token"  # a token was handed to us: the cluster uses it
        try:
            ray.init(address=address, log_to_driver=True, logging_level="WARNING")  # its INFO lines: noise
        except Exception as e:  # ConnectionError, ValueError, RuntimeError, … by Ray version
            from .errors import ConfigError

            why = " ".join(str(e).split())[:300] or type(e).__name__
            raise ConfigError(f"cannot join the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']!r}: {why}") from None
        return address
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=True, logging_level="WARNING")
    return "local"


def alive_nodes() -> list[dict[str, Any]]:
    """The cluster's alive nodes (Ray's node table entries)."""
    return [n for n in ray.nodes() if n.get("Alive")]


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def run_on_every_node(fn: Any, payload: Any, timeout: float = 300.0) -> dict[str, Any]:
    """``fn(payload)`` once on every alive node (node-affinity placement, not soft): node label
    (``address (node id prefix)``) -> result. A node that cannot run it reports the error."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0)(fn)
    refs = {}
    for n in alive_nodes():
        label = f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})"
        refs[label] = remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                                     max_retries=0).remote(payload)
    out = {}
    for label, ref in refs.items():
        try:
            out[label] = ray.get(ref, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - reported as that node's problem
            out[label] = {"problems": [f"pre-flight task failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"],
                          "backends": {}}
    return out


def run_on_node(fn: Any, payload: Any, node_id: str, num_cpus: float = 1) -> Any:
    """``fn(payload)`` as one Ray task pinned to ``node_id``; its output streams to the driver."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
    return ray.get(remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
                   .remote(payload))


def node_ids_where(fn: Any, payload: Any) -> list[tuple[str, str]]:
    """``(node id, node label)`` of the alive nodes where ``fn(payload)`` is true."""
    labels = {f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})": n["NodeID"] for n in alive_nodes()}
    found = run_on_every_node(fn, payload)
    return [(labels[lab], lab) for lab, ok in found.items() if ok is True]


SHOWN_FIRST = ("epoch", "val_top1", "best_top1", "train_loss", "images_per_s")


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a report, the ones Tune's console table should show first."""
    clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return {**{k: clean[k] for k in SHOWN_FIRST if k in clean}, **clean}


#: Node-local checkpoint folders of trial processes: ``<prefix><pid>-<what>-<random>`` in the
#: temp folder.  A trial whose process is killed, crashes or is stopped by Tune without
#: returning cannot remove its own; the next trial on the node removes those of dead processes.
STAGING_PREFIX = "attnlab-ckpt-"


def orphaned_staging(folder: Optional[Path] = None) -> list[Path]:
    """The checkpoint folders (``STAGING_PREFIX``) in ``folder`` (default: the temp folder)
    whose process is gone."""
    out = []
    for path in Path(folder or tempfile.gettempdir()).glob(STAGING_PREFIX + "*"):
        pid = path.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            out.append(path)
    return out


def sweep_staging(folder: Optional[Path] = None) -> list[Path]:
    """Remove the checkpoint folders that processes now gone left in ``folder`` (default: the
    temp folder); the removed paths.  Folders of live processes and anything named otherwise
    are left alone."""
    removed = orphaned_staging(folder)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _staging_dir(what: str) -> Path:
    """A new node-local checkpoint folder of this process (older ones of dead processes swept)."""
    sweep_staging()
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{what}-"))


def _tune_reporter():
    def report(metrics: dict[str, Any], saved: Optional[Path]) -> None:
        clean = _numeric(metrics)
        if saved is not None:
            # Hand Tune a folder holding a copy: Tune moves it into the trial's storage.
            with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-report-") as d:
                shutil.copy2(saved, Path(d) / CKPT_NAME)
                tune.report(clean, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(clean)

    return report


def _node_local(cfg: Any, trial_id: str) -> Optional[Path]:
    """Folders the driver named may not exist on this node: a trial writes only to a folder of
    this node (its checkpoints travel through Tune's shared storage, its metrics to MLflow).
    Returns the folder made here, if one was (:func:`_remove_if_empty` it when the trial ends)."""
    if Path(cfg.work_dir).is_dir():
        return None
    cfg.work_dir = Path(tempfile.gettempdir()) / f"attnlab-work-{trial_id}"
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    return cfg.work_dir


def _remove_if_empty(folder: Optional[Path]) -> None:
    if folder is not None:
        try:
            folder.rmdir()
        except OSError:  # something was written there (a trial with no tracking URI): kept
            pass


def _fetch_checkpoint(checkpoint: Any, staging: Path) -> Optional[Path]:
    """The trial's last checkpoint file, copied from Tune's storage into this process's own
    staging folder (removed with it), or None when the checkpoint holds none.  Ray's
    ``to_directory()`` without a path would leave a ``checkpoint_tmp_*`` copy in the temp
    folder of the node for good."""
    if checkpoint is None:
        return None
    local = Path(checkpoint.to_directory(str(staging / "resume")))
    return local / CKPT_NAME if (local / CKPT_NAME).exists() else None


def _tag_attempt(cfg: Any, trial_id: str) -> None:
    tags = dict(cfg.tracking.tags)
    tags["attnlab.tune_trial_id"] = trial_id
    tags["attnlab.node"] = ray.util.get_node_ip_address()  # which node of the cluster ran (this attempt)
    cfg.tracking.tags = tags


def trainable(config: dict[str, Any], configs: Optional[dict[str, dict[str, Any]]] = None) -> None:
    """Ray Tune function trainable: one trial of ``pipeline.train.fit`` (or of a DDP group of
    ``workers_per_trial`` Ray Train workers, see :func:`_ddp_trial`).

    ``config["trial"]`` is the trial's id and run name (what Tune shows and stores per trial);
    the full trial configs come through ``configs`` (``tune.with_parameters``: the object store).
    """
    tree = configs[config["trial"]["id"]] if configs is not None else config["trial"]
    cfg = validate_trial(tree)
    ctx = tune.get_context()
    if cfg.workers_per_trial > 1:
        return _ddp_trial({**config, "trial": tree}, ctx.get_trial_id())
    _fit_in_tune(cfg, ctx.get_trial_id(), _tune_reporter())


#: Ray's INFO line per saved checkpoint ("Checkpoint successfully created at: ..."), once per
#: epoch of every trial, buries the grid's own output; its warnings and errors still show.
_QUIET_LOGGERS = ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage")


def _fit_in_tune(cfg: Any, trial_id: str, reporter: Any) -> None:
    """``fit`` inside a Tune trial: node-local folders, this attempt's tags, and a resume from
    Tune's last checkpoint of the trial (a retry after a failure, or a restored experiment)."""
    import logging

    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    made = _node_local(cfg, trial_id)
    ckpt_dir = _staging_dir(trial_id)
    try:
        resume_from = _fetch_checkpoint(tune.get_checkpoint(), ckpt_dir)
        _tag_attempt(cfg, trial_id)
        fit(cfg, reporter=reporter, checkpoint_dir=ckpt_dir, resume_from=resume_from)
    finally:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        _remove_if_empty(made)


def _ddp_trial(config: dict[str, Any], trial_id: str) -> None:
    """One trial trained data-parallel by ``workers_per_trial`` Ray Train workers (a
    ``TorchTrainer`` run inside this Tune trial; gloo on CPU, NCCL on GPUs).

    Each worker loads its shard (the loaders' ``rank``/``world_size``); rank 0 tracks to the
    trial's MLflow run and writes the checkpoints, which Ray Train keeps in the grid's storage
    under a run name of this trial, so a retried trial starts from the last one. Per-epoch
    metrics reach Tune (and its scheduler) through Ray's ``TuneReportCallback``.
    """
    from ray.train import FailureConfig as TrainFailureConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = config["trial"]
    res = config.get("resources_per_worker") or {"CPU": 1}
    trainer = TorchTrainer(
        _ddp_worker,
        train_loop_config={"trial": cfg, "trial_id": trial_id},
        scaling_config=ScalingConfig(num_workers=int(cfg["workers_per_trial"]), use_gpu=res.get("GPU", 0) > 0,
                                     resources_per_worker=res),
        run_config=TrainRunConfig(name=f"{cfg['name'] or trial_id}-ddp", storage_path=config["storage"],
                                  callbacks=[TuneReportCallback()],
                                  failure_config=TrainFailureConfig(max_failures=0)),
    )
    trainer.fit()


def _ddp_worker(loop_config: dict[str, Any]) -> None:
    """The training loop of one DDP worker (runs in a Ray Train worker process)."""
    import ray.train as train

    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = validate_trial(loop_config["trial"])
    made = _node_local(cfg, f"{loop_config['trial_id']}-r{rank}")
    _tag_attempt(cfg, loop_config["trial_id"])
    ckpt_dir = _staging_dir(f"ddp-r{rank}")

    def report(metrics: dict[str, Any], saved: Optional[Path]) -> None:
        clean = _numeric(metrics)
        if saved is not None and rank == 0:
            with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-report-") as d:
                shutil.copy2(saved, Path(d) / CKPT_NAME)
                train.report(clean, checkpoint=train.Checkpoint.from_directory(d))
        else:
            train.report(clean)  # every rank reports (a collective); rank 0 carries the checkpoint

    try:
        resume_from = _fetch_checkpoint(train.get_checkpoint(), ckpt_dir)
        fit(cfg, reporter=report, checkpoint_dir=ckpt_dir, resume_from=resume_from, rank=rank, world_size=world)
    finally:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        _remove_if_empty(made)


def _tune_defaults() -> None:
    """Tune settings of every grid and search (a user's own environment variable wins).

    The experiment state is saved every 5 s, so a driver killed mid-grid loses at most that.
    Tune also saves it whenever a trial has checkpointed ``num_to_keep`` (1) times since the
    last save, and with epochs of a few seconds warns about that on every save ("snapshotting
    has been triggered multiple times ... may become a bottleneck"); a save takes milliseconds
    here (the state of a few trials), so the warning only buries the trial results."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def run_grid(trials: list[dict[str, Any]], *, name: str, storage: str, resume: bool = False,
             max_concurrent: int = 0, cpus_per_trial: float = 1, gpus_per_trial: float = 0,
             max_failures: int = 2, scheduler: str = "none", epochs: int = 1, grace_period: Optional[int] = None,
             verbose: int = 1,
             callbacks: Optional[list] = None) -> list[dict[str, Any]]:
    """Run ``trials`` (TrialConfig trees, each with ``name`` = trial id) as one Tune experiment.

    Returns one row per trial: ``{"trial": id, "status": ..., metrics...}``.
    """
    _tune_defaults()

    def resources(config: dict[str, Any]) -> dict[str, float]:
        # A DDP trial's own process only waits on its Ray Train workers, which ask for the
        # per-trial resources each (scheduled by Ray Train, not in this trial's bundle).
        if int(configs[config["trial"]["id"]].get("workers_per_trial", 1)) > 1:
            return {"cpu": 0.01}
        return {"cpu": cpus_per_trial, "gpu": gpus_per_trial}

    configs = {t["name"]: t for t in trials}
    fn = tune.with_resources(tune.with_parameters(trainable, configs=configs), resources)
    shown = [{"id": t["name"], "run": t["tracking"].get("run_name") or t["name"]} for t in trials]
    worker_res = {"CPU": cpus_per_trial, **({"GPU": gpus_per_trial} if gpus_per_trial else {})}
    exp_path = storage.rstrip("/") + "/" + name
    sched = None
    if scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        sched = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=grace_period or max(1, epochs // 8))
    if resume and tune.Tuner.can_restore(exp_path):
        tuner = tune.Tuner.restore(exp_path, fn, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            fn,
            param_space={"trial": tune.grid_search(shown), "storage": storage,
                         "resources_per_worker": worker_res},
            tune_config=tune.TuneConfig(metric="val_top1", mode="max", max_concurrent_trials=max_concurrent or None,
                                        scheduler=sched,
                                        # a finished trial's worker process (torch and our
                                        # packages imported) starts the next trial
                                        reuse_actors=True,
                                        trial_name_creator=lambda t: str(t.config["trial"]["id"]),
                                        trial_dirname_creator=lambda t: str(t.config["trial"]["id"])),
            run_config=tune.RunConfig(
                name=name, storage_path=storage, verbose=verbose, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    results = tuner.fit()
    rows = []
    for r in results:
        cfg = configs.get((r.config or {}).get("trial", {}).get("id"), {})
        m = r.metrics or {}
        status = "error" if r.error else ("diverged" if m.get("diverged") else "finished")
        rows.append({"trial": cfg.get("name"), "status": status, "best_top1": m.get("best_top1"),
                     "final_top1": m.get("val_top1"), "epochs": m.get("epoch"), "error": str(r.error).splitlines()[0] if r.error else None})
    return rows


# ---------------------------------------------------------------------------------------------
# searches (experiments/search.py): Optuna's define-by-run sampler through Tune's OptunaSearch
# ---------------------------------------------------------------------------------------------

SEARCH_STATUS = "attnlab.status"  # an Optuna user attribute of each trial, as on its MLflow run


def search_status(result: Optional[dict[str, Any]], error: bool = False) -> str:
    """How a search trial ended, from its last result: failed | diverged | stopped_early | finished."""
    if error or not result:
        return "failed"
    if result.get("diverged"):
        return "diverged"
    if result.get("epoch") is not None and result.get("max_epochs") is not None \
            and result["epoch"] < result["max_epochs"]:
        return "stopped_early"
    return "finished"


def trial_gmacs(cfg: Any) -> float:
    """GMACs per image of a trial's model at its evaluation resolution (as ``fit`` counts them)."""
    from blocks import build_model
    from blocks.cost import count_macs

    res = cfg.data.resolutions()[1]
    classes = cfg.model.num_classes or cfg.data.num_classes() or 1000
    m = build_model(cfg.model.backbone, classes, attention=cfg.model.attention, small_stem=cfg.model.small_stem)
    return count_macs(m, (res, res)) / 1e9


def search_trainable(config: dict[str, Any], context: Optional[dict[str, Any]] = None) -> None:
    """One trial of a search (Tune function trainable).

    ``config`` holds the sampled point (Optuna's parameter names) and ``optuna_trial``, its
    number in the study; ``context`` (``tune.with_parameters``) the search itself
    (:class:`pipeline.search.Search`: base + space), the tracking target and the parent run.
    The point becomes a trial config (the base + the point, validated as any trial); the
    trial's child run is found or made under the parent (keyed ``t<number>``: a retried trial
    keeps its run); then ``fit`` runs exactly as in a grid, reporting each epoch to Tune with
    the trial's GMACs and planned epochs (for the gmacs objective, and to tell a trial the
    scheduler stopped from one that ran its course).
    """
    from .tracking import ensure_child_runs
    from .train import run_name

    search = context["search"]
    number = int(config["optuna_trial"])
    point = {k: config[k] for k in ["attention", *[d.name for d in search.dims]] if k in config}
    key = f"t{number:04d}"
    tree = search.tree(point)
    tree["name"] = key
    cfg = validate_trial(tree, source=f"search trial {key}")
    tracking = tree.setdefault("tracking", {})
    if cfg.tracking.enabled and context.get("uri"):
        name = f"#{number} {run_name(cfg)}"
        tags = {"attnlab.search": context["name"], "attnlab.optuna_trial": str(number),
                **{f"point.{k}": str(v)[:250] for k, v in point.items()}, **context.get("tags", {})}
        run_id = ensure_child_runs(context["uri"], context["experiment"], context["parent_run_id"],
                                   [(key, name, tags)])[key]
        tracking.update({"uri": context["uri"], "experiment": context["experiment"], "run_id": run_id,
                         "parent_run_id": context["parent_run_id"], "run_name": name,
                         "tags": {**tracking.get("tags", {}), **tags, "attnlab.trial": key}})
        cfg = validate_trial(tree, source=f"search trial {key}")
    ctx = tune.get_context()
    if cfg.workers_per_trial > 1:
        return _ddp_trial({"trial": cfg.model_dump(mode="json"), "storage": context["storage"],
                           "resources_per_worker": context.get("resources_per_worker")}, ctx.get_trial_id())
    extra = {"gmacs": trial_gmacs(cfg), "max_epochs": float(cfg.optim.epochs), "optuna_trial": float(number)}
    base_report = _tune_reporter()

    def report(metrics: dict[str, Any], saved: Optional[Path]) -> None:
        base_report({**metrics, **extra}, saved)

    _fit_in_tune(cfg, ctx.get_trial_id(), report)


def default_concurrency(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """Trials the cluster can run at once with these per-trial resources (at least 1)."""
    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // max(cpus_per_trial, 1e-9))
    if gpus_per_trial:
        n = min(n, int(res.get("GPU", 0) // gpus_per_trial))
    return max(n, 1)


def run_search(space: Any, *, sampler: Any, study_storage: Any, study_name: str, metrics: list[str],
               modes: list[str], num_samples: int, context: dict[str, Any], storage: str, session: str,
               max_concurrent: int = 0, cpus_per_trial: float = 1, gpus_per_trial: float = 0,
               max_failures: int = 2, scheduler: str = "asha", epochs: int = 1,
               grace_period: Optional[int] = None, verbose: int = 1) -> list[dict[str, Any]]:
    """Run ``num_samples`` new trials of an Optuna study as one Tune experiment.

    ``space`` is the define-by-run function (:class:`pipeline.search.SpaceFn`), ``sampler``
    the Optuna sampler, ``study_storage`` Optuna's storage holding the study ``study_name``
    (created beforehand: ``OptunaSearch`` loads it, so a resumed search adds trials to the same
    study). ``metrics``/``modes``: the objectives (two for a Pareto search). Trials run at most
    ``max_concurrent`` at once (``ConcurrencyLimiter``; 0: as the cluster's resources allow);
    ``scheduler="asha"`` stops trials early on per-epoch ``val_top1``.  Each session is its own
    Tune experiment ``<storage>/<study_name>/<session>``.

    Returns one row per trial: ``{"trial": "t<number>", "number", "status", metrics...}``.
    """
    from ray.tune.search import ConcurrencyLimiter

    _tune_defaults()
    from .optuna_search import AttnlabOptunaSearch  # imports optuna: searches only, not grid trials

    searcher = AttnlabOptunaSearch(space=space, metric=metrics if len(metrics) > 1 else metrics[0],
                                   mode=modes if len(modes) > 1 else modes[0], sampler=sampler,
                                   study_name=study_name, storage=study_storage)
    limit = max_concurrent or default_concurrency(cpus_per_trial, gpus_per_trial)
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=limit)
    sched = None
    if scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        sched = ASHAScheduler(metric="val_top1", mode="max", time_attr="epoch", max_t=epochs,
                              grace_period=grace_period or max(1, epochs // 8))
    workers = int(context["search"].base.get("workers_per_trial") or 1)
    res = {"cpu": 0.01} if workers > 1 else {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    context = {**context, "storage": storage,
               "resources_per_worker": {"CPU": cpus_per_trial, **({"GPU": gpus_per_trial} if gpus_per_trial else {})}}
    fn = tune.with_resources(tune.with_parameters(search_trainable, context=context), res)

    def trial_name(t: Any) -> str:
        return f"t{int(t.config['optuna_trial']):04d}"

    tuner = tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=sched, num_samples=num_samples,
                                    reuse_actors=True, trial_name_creator=trial_name,
                                    trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=session, storage_path=storage.rstrip("/") + "/" + study_name,
                                  verbose=verbose, failure_config=tune.FailureConfig(max_failures=max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    results = tuner.fit()
    rows = []
    for r in results:
        c = r.config or {}
        if "optuna_trial" not in c:
            continue
        m = r.metrics or {}
        number = int(c["optuna_trial"])
        status = search_status(m, error=r.error is not None)
        rows.append({"trial": f"t{number:04d}", "number": number, "status": status,
                     "best_top1": m.get("best_top1"), "final_top1": m.get("val_top1"), "gmacs": m.get("gmacs"),
                     "epochs": m.get("epoch"), "tune_trial_id": m.get("trial_id"),
                     "error": str(r.error).splitlines()[0] if r.error else None})
    return sorted(rows, key=lambda r: r["number"])
