"""The plain PyTorch backend: output contract, order, sharding, augmentation meaning."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pipeline.data as data
from _data_makers import make_imagefolder
from pipeline.config import DataConfig
from pipeline.data import make_loaders
from pipeline.data.loader import epoch_indices
from pipeline.data import keyed_random as kr
from pipeline.data.plan import Op
from pipeline.data.source import read_rgb
from pipeline.data.torch_loader import (
    Fit,
    SampleDataset,
    batch_padcrop,
    batch_rrc,
    resize_cl,
    fit_window,
    sample_transform,
)
from pipeline.errors import ConfigError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))


def cfg(**kw):
    kw.setdefault("backend", "torch")
    kw.setdefault("batch_size", 64)
    return DataConfig(**kw)


def collect(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_digits_output_contract():
    train, val, info = make_loaders(cfg())
    assert info["num_classes"] == 10 and info["counts"] == {"train": 1438, "val": 359}
    assert info["backend"] == "torch" and len(info["fingerprint"]) == 64
    assert info["input_shape"] == (3, 32, 32) and info["style"] == "digits"
    x, y = next(iter(train))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and y.shape == (64,)
    assert len(train) == 1438 // 64 and len(val) == -(-359 // 64)
    xs = torch.cat([x for x, _ in collect(val)])
    assert xs.shape[0] == 359
    assert abs(xs.mean().item()) < 0.1 and abs(xs.std().item() - 1) < 0.1  # normalised


def test_raw_mode_is_exact_and_layout_switch():
    c = cfg(normalize=False, augment="none", shuffle=False, drop_last=False, channels_last=False)
    train, val, _ = make_loaders(c)
    src = data.load_source(c)
    x = torch.cat([x for x, _ in collect(train)])
    assert x.dtype == torch.uint8 and x.is_contiguous()
    assert torch.equal(x, torch.from_numpy(src.train.array).permute(0, 3, 1, 2))
    y = torch.cat([y for _, y in collect(val)])
    assert torch.equal(y, torch.from_numpy(src.val.labels))


def test_order_is_seeded_per_epoch_and_resumable():
    a, _, _ = make_loaders(cfg(), seed=3)
    e0 = [y for _, y in collect(a)]
    e1 = [y for _, y in collect(a)]
    assert not torch.equal(torch.cat(e0), torch.cat(e1))
    b, _, _ = make_loaders(cfg(), seed=3)
    b.set_epoch(1)
    assert torch.equal(torch.cat([y for _, y in collect(b)]), torch.cat(e1))
    (xa, _), (xb, _) = next(iter(make_loaders(cfg(), seed=3)[0])), next(iter(b))
    assert xa.shape == xb.shape


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_shards(world):
    n = 1438
    train = [epoch_indices(n, shuffle=True, seed=0, epoch=2, rank=r, world_size=world, even=True)
             for r in range(world)]
    assert len({len(t) for t in train}) == 1
    allt = np.concatenate(train)
    assert len(np.unique(allt)) == len(allt) == n - n % world
    val = [epoch_indices(359, shuffle=False, seed=0, epoch=0, rank=r, world_size=world,
                         even=False) for r in range(world)]
    assert sorted(np.concatenate(val).tolist()) == list(range(359))
    loaders = [make_loaders(cfg(), rank=r, world_size=world)[1] for r in range(world)]
    assert sum(l.num_samples for l in loaders) == 359
    with pytest.raises(ConfigError, match="rank"):
        make_loaders(cfg(), rank=world, world_size=world)


def test_padcrop_is_a_window_of_the_zero_padded_image():
    x = torch.randint(1, 255, (64, 8, 8, 3), dtype=torch.uint8)
    out = batch_padcrop(x, 2, kr.sample_keys(kr.epoch_key(0, 0), np.arange(64)))
    padded = torch.nn.functional.pad(x, (0, 0, 2, 2, 2, 2))
    seen = set()
    for i in range(64):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(out[i], padded[i, dy:dy + 8, dx:dx + 8])]
        assert hits, i
        seen.update(hits)
    assert len(seen) > 15  # offsets spread over the 25 possible windows


def test_batch_rrc_is_each_images_window_resized_with_or_without_threads():
    """The per-image random-resized crop of the in-memory path: image i is its own keyed window
    resized (the math), and spreading the images over threads (GPU training) changes nothing."""
    from concurrent.futures import ThreadPoolExecutor

    x = torch.randint(0, 256, (37, 45, 61, 3), dtype=torch.uint8)  # odd, non-square
    keys = kr.sample_keys(kr.epoch_key(3, 1), np.arange(37))
    op = Op("rrc", res=19)
    serial = batch_rrc(x, op, keys)
    with ThreadPoolExecutor(4) as pool:
        threaded = batch_rrc(x, op, keys, pool)
    assert serial.shape == (37, 19, 19, 3) and serial.dtype == torch.uint8
    assert torch.equal(serial, threaded)
    for i, key in enumerate(keys.tolist()):
        top, left, h, w = kr.rrc_window(45, 61, op.scale, op.aspect, key)
        want = resize_cl(x[i, top:top + h, left:left + w].permute(2, 0, 1), 19).permute(1, 2, 0)
        assert torch.equal(serial[i], want), i


def test_geometry_helpers():
    assert fit_window(256, 320, 224 / 256) == (16, 48, 224)
    ekey = kr.epoch_key(0, 0)
    for i in range(200):
        top, left, h, w = kr.rrc_window(60, 90, (0.08, 1.0), (3 / 4, 4 / 3), kr.sample_key(ekey, i))
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 90
    x = torch.arange(3 * 6 * 10, dtype=torch.uint8).view(3, 6, 10)
    assert torch.equal(Fit(6, 1.0)(x), x[:, :, 2:8])  # centred square, already 6x6
    assert Fit(4, 1.0)(x).shape == (3, 4, 4)


def test_imagefolder_file_path(tmp_path):
    root = make_imagefolder(tmp_path / "if")
    c = cfg(dataset="imagefolder", root=root, batch_size=4, workers=0, train_res=24, val_res=32,
            shuffle=False)
    train, val, info = make_loaders(c)
    assert info["style"] == "imagenet" and info["classes"] == ["cat", "dog", "emu"]
    xs = collect(train)
    assert [x.shape for x, _ in xs] == [(4, 3, 24, 24)] * 3
    assert torch.cat([y for _, y in xs]).tolist() == [0] * 4 + [1] * 4 + [2] * 4
    vx = collect(val)
    assert vx[0][0].shape == (4, 3, 32, 32) and vx[-1][0].shape == (2, 3, 32, 32)
    assert vx[0][0].is_contiguous(memory_format=torch.channels_last)
    # val = centred square of side 0.875 * short side, resized: compare with PIL's decode
    raw = make_loaders(c.model_copy(update=dict(normalize=False, augment="none")))[1]
    x0 = next(iter(raw))[0][0].permute(1, 2, 0).numpy().astype(float)
    ref = torch.from_numpy(read_rgb(data.load_source(c).val.paths[0])).permute(2, 0, 1)
    ref = Fit(32, 1.0)(ref).permute(1, 2, 0).numpy().astype(float)
    assert np.abs(x0 - ref).mean() < 3  # same pixels up to JPEG decoder rounding


@pytest.mark.parametrize("channels_last", [True, False])
def test_worker_processes_give_the_same_batches(tmp_path, channels_last):
    """Batches finished in the workers (WorkerBatch: normalised a sample at a time) equal those
    normalised in the main process (Normaliser), bit for bit, in either layout."""
    root = make_imagefolder(tmp_path / "if")
    c = cfg(dataset="imagefolder", root=root, batch_size=4, train_res=17, val_res=23, workers=0,
            channels_last=channels_last)
    for split in (0, 1):  # train (keyed augmentation), val
        b0 = collect(make_loaders(c)[split])
        b1 = collect(make_loaders(c.model_copy(update={"workers": 1}))[split])
        assert len(b0) == len(b1) > 0
        for (x0, y0), (x1, y1) in zip(b0, b1):
            assert x1.dtype == torch.float32 and x1.is_contiguous(
                memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_generated_images_go_through_the_sample_path():
    from pipeline.data.source import Split
    from pipeline.data.synthetic import Generator

    gen = Generator(3, 40, 0, 0)
    split = Split(labels=np.arange(6) % 3, make=gen)
    ds = SampleDataset(split, sample_transform((Op("rrc", res=24), Op("flip")), seed=1))
    x, y = ds[(4, 0)]
    assert x.shape == (24, 24, 3) and x.dtype == torch.uint8 and y == 1
    assert torch.equal(ds[(4, 0)][0], x) and not torch.equal(ds[(4, 1)][0], x)  # keyed by epoch


def test_auto_falls_back_to_torch_with_one_warning(monkeypatch, capsys):
    monkeypatch.setattr(data, "_ffcv_state", {"ok": False, "why": "ImportError: no ffcv"})
    monkeypatch.setattr(data, "_warned", set())
    for _ in range(2):
        _, _, info = make_loaders(cfg(backend="auto"))
        assert info["backend"] == "torch"
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "FFCV not importable" in err
    with pytest.raises(ConfigError, match="data.backend"):
        make_loaders(cfg(backend="ffcv"))


def test_accepts_a_plain_dict_section():
    _, _, info = make_loaders({"dataset": "digits", "backend": "torch", "train_res": 28})
    assert info["train_res"] == 28 and info["input_shape"] == (3, 28, 28)
