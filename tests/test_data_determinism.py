"""Same seed, same numbers: augmentation randomness keyed by (seed, epoch, sample index).

* two separate processes running the same trial see the same first batch and the same
  epoch-1 loss, with either backend (FFCV's numba ops used to draw from an unseeded
  per-thread generator);
* a loader started at epoch k hands out what an uninterrupted one hands out in epoch k
  (exact resume), FFCV included, with any number of FFCV threads;
* the three implementations of the keyed draws (Python, numpy, numba) agree, so both backends
  draw the same crops, offsets and flips: on digits (stored raw, no resize) their train
  batches are equal.

The FFCV tests follow the policy of ``tests/test_data_ffcv.py``: they fail when ffcv does not
import, unless ``ATTNLAB_SKIP_FFCV=1`` is set.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _data_makers import require_ffcv
from pipeline.config import DataConfig
from pipeline.data import keyed_random as kr
from pipeline.data import make_loaders

ROOT = Path(__file__).resolve().parents[1]
SYNTH_IMAGENET = {"num_classes": 3, "image_size": 72, "train_count": 48, "val_count": 8}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNLAB_CACHE", str(path))
        yield path


@pytest.fixture
def ffcv(cache):
    require_ffcv()
    from pipeline.data import ffcv_backend

    return ffcv_backend


def epochs(loader, which):
    out = {}
    for e in range(max(which) + 1):
        got = [(x.clone(), y.clone()) for x, y in loader]  # FFCV reuses its buffers
        if e in which:
            out[e] = got
    return out


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


# ---------------------------------------------------------------- the keyed draws
def test_python_and_numpy_draws_agree_and_depend_on_every_key_part():
    idx = np.array([0, 1, 7, 2**40, 1437])
    for seed, epoch in ((0, 0), (3, 5), (2**31 - 1, 999)):
        ek = kr.epoch_key(seed, epoch)
        keys = kr.sample_keys(ek, idx)
        assert keys.tolist() == [kr.sample_key(ek, int(i)) for i in idx]
        for stream, k in ((kr.RRC, 0), (kr.PAD, 1), (kr.FLIP, 0)):
            assert kr.uniform_array(keys, stream, k).tolist() == [
                kr.uniform(int(key), stream, k) for key in keys]
    base = kr.uniform(kr.sample_key(kr.epoch_key(0, 0), 5), kr.PAD, 0)
    for other in (kr.sample_key(kr.epoch_key(1, 0), 5), kr.sample_key(kr.epoch_key(0, 1), 5),
                  kr.sample_key(kr.epoch_key(0, 0), 6)):
        assert kr.uniform(other, kr.PAD, 0) != base
    u = kr.uniform_array(kr.sample_keys(kr.epoch_key(0, 0), np.arange(20000)), kr.FLIP, 0)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert abs(kr.flips_array(kr.sample_keys(kr.epoch_key(0, 0), np.arange(20000))).mean()
               - 0.5) < 0.02


def test_numba_draws_equal_the_python_ones(ffcv):
    rng = np.random.default_rng(0)
    ek = kr.epoch_key(7, 3)
    for i in rng.integers(0, 2**40, 300).tolist():
        key = kr.sample_key(ek, i)
        assert int(ffcv._nb_sample_key(np.uint64(ek), np.uint64(i))) == key
        assert ffcv._nb_uniform(np.uint64(key), kr.PAD, 1) == kr.uniform(key, kr.PAD, 1)
        h, w = (int(v) for v in rng.integers(8, 600, 2))
        for scale, ratio in (((0.08, 1.0), (3 / 4, 4 / 3)), ((0.35, 1.0), (0.2, 5.0))):
            want = kr.rrc_window(h, w, scale, ratio, key)
            got = ffcv._nb_rrc_window(np.uint32(h), np.uint32(w), np.uint64(key), scale[0],
                                      scale[1], np.log(ratio[0]), np.log(ratio[1]), ratio[0],
                                      ratio[1])
            assert tuple(int(v) for v in got) == want, (h, w, key)


# ---------------------------------------------------------------- exact resume, thread counts
@pytest.mark.parametrize("backend", ["torch", "ffcv"])
def test_resume_at_an_epoch_boundary_gives_the_same_batches(request, cache, backend):
    if backend == "ffcv":
        request.getfixturevalue("ffcv")
    for kw in (dict(dataset="digits", batch_size=128),  # fit + pad-and-crop (raw storage)
               dict(dataset="synthetic", synthetic=SYNTH_IMAGENET, batch_size=16,
                    augment="imagenet", train_res=40, write_mode="raw")):  # rrc + flip
        c = DataConfig(backend=backend, workers=1, **kw)
        whole = epochs(make_loaders(c, seed=4)[0], {1, 2})
        assert not same(whole[1], whole[2])  # new order and new augmentations each epoch
        resumed = make_loaders(c, seed=4)[0]
        resumed.set_epoch(2)
        assert same(epochs(resumed, {0})[0], whole[2]), kw["dataset"]
        other_seed = epochs(make_loaders(c, seed=5)[0], {0})[0]
        assert not same(other_seed, epochs(make_loaders(c, seed=4)[0], {0})[0])


def test_ffcv_batches_do_not_depend_on_its_thread_count(ffcv):
    c = DataConfig(dataset="synthetic", synthetic=SYNTH_IMAGENET, batch_size=16,
                   augment="imagenet", train_res=40, write_mode="raw", backend="ffcv")
    one = epochs(make_loaders(c.model_copy(update={"workers": 1}), seed=2)[0], {1})[1]
    two = epochs(make_loaders(c.model_copy(update={"workers": 2}), seed=2)[0], {1})[1]
    assert same(one, two)


def test_both_backends_draw_the_same_augmentations(ffcv):
    """digits: stored raw at its size, so fit is the identity and pad-and-crop is exact."""
    c = DataConfig(dataset="digits", batch_size=64, normalize=False, workers=1)
    f = epochs(make_loaders(c.model_copy(update={"backend": "ffcv"}), seed=9)[0], {0, 1})
    t = epochs(make_loaders(c.model_copy(update={"backend": "torch"}), seed=9)[0], {0, 1})
    for e in (0, 1):
        assert same([(x.contiguous(), y) for x, y in f[e]], [(x.contiguous(), y) for x, y in t[e]])


# ---------------------------------------------------------------- two processes, one trial
def probe(backend: str, out: str) -> None:
    """One trial's first batch and epoch-1 loss, as the trainer computes them."""
    from pipeline.config import load_trial_config
    from pipeline.train import fit

    sets = [f"data.backend={backend}", "data.workers=0", "threads=1", "model.attention=spa",
            "seed=0", "optim.epochs=1", "tracking.enabled=false", f"work_dir={out}",
            "checkpoint.keep_final=false"]
    cfg = load_trial_config(None, sets)
    train, _, info = make_loaders(cfg.data, seed=cfg.seed)
    x, y = next(iter(train))
    first = hashlib.sha256(x.contiguous().numpy().tobytes() + y.numpy().tobytes()).hexdigest()
    losses = []
    fit(cfg, reporter=lambda m, _ckpt: losses.append(m.get("train_loss")))
    print(json.dumps({"backend": info["backend"], "first": first, "loss": losses[0]}))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "ffcv"])
def test_two_processes_same_seed_same_first_batch_and_loss(request, cache, tmp_path, backend):
    if backend == "ffcv":
        request.getfixturevalue("ffcv")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
               ATTNLAB_CACHE=str(cache))
    procs = [subprocess.Popen([sys.executable, __file__, "probe", backend, str(tmp_path / f"w{i}")],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    a, b = results
    assert a["backend"] == b["backend"] == backend
    assert a["first"] == b["first"]
    assert a["loss"] == b["loss"] and np.isfinite(a["loss"])


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "probe":
    probe(sys.argv[2], sys.argv[3])
