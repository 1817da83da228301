"""FFCV backend: write -> read round trips, same meaning as the torch backend, no hang,
atomic writes, damaged files.  Without ffcv these tests FAIL (``make install-ffcv``);
``ATTNLAB_SKIP_FFCV=1`` skips them on purpose.

FFCV compiles each loader's pipeline on its first epoch (seconds), so loaders are built once
per module (``loaders`` fixture) and shared by the tests.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _data_makers import make_cifar, make_imagefolder, make_tiny, require_ffcv  # noqa: E402 (after the set-up above, which must run first)

require_ffcv(module_level=True)

import pipeline.data as data  # noqa: E402 (after the set-up above, which must run first)
from pipeline.config import DataConfig  # noqa: E402 (after the set-up above, which must run first)
from pipeline.data import ffcv_backend as fb  # noqa: E402 (after the set-up above, which must run first)
from pipeline.data import make_loaders, store  # noqa: E402 (after the set-up above, which must run first)
from pipeline.data.__main__ import main as cli  # noqa: E402 (after the set-up above, which must run first)
from pipeline.data.loader import epoch_indices  # noqa: E402 (after the set-up above, which must run first)
from pipeline.data.plan import make_plan  # noqa: E402 (after the set-up above, which must run first)
from pipeline.data.write import resolve_policy, write_betons  # noqa: E402 (after the set-up above, which must run first)
from pipeline.errors import ConfigError  # noqa: E402 (after the set-up above, which must run first)

pytestmark = [
    pytest.mark.ffcv,
    # numba's finalizer of FFCV's discarded JIT closures: harmless, see ffcv_backend
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]
ITERATED: set = set()  # pipeline signatures already compiled and iterated in this module

SYNTH = {"num_classes": 4, "image_size": 32, "train_count": 24, "val_count": 8}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNLAB_CACHE", str(base / "cache"))
        make_cifar(base / "c10")
        make_cifar(base / "c100", hundred=True)
        make_tiny(base / "tiny")
        make_imagefolder(base / "if")
        yield {"base": base, "cifar10": base / "c10", "cifar100": base / "c100",
               "tiny-imagenet": base / "tiny", "imagefolder": base / "if", "digits": None,
               "synthetic": None}


def cfg(name, roots, **kw):
    kw.setdefault("workers", 1)
    extra = {"synthetic": SYNTH} if name == "synthetic" else {}
    return DataConfig(dataset=name, root=roots[name], **extra, **kw)


def write(c: DataConfig, out: Path, **kw):
    src = data.load_source(c)
    return write_betons(data.get_dataset(c.dataset), src, resolve_policy(c, src), out,
                        workers=1, progress=False, **kw)


# ---------------------------------------------------------------- round trips (file level)
@pytest.mark.parametrize("name", ["digits", "cifar10", "cifar100", "tiny-imagenet",
                                  "imagefolder", "synthetic"])
def test_write_read_round_trip_raw_is_exact(roots, tmp_path, name):
    c = cfg(name, roots, write_mode="raw")
    res = write(c, tmp_path / "b")
    src = data.load_source(c)
    m = res.manifest
    assert res.written and m["fingerprint"] == src.fingerprint and m["dataset"] == name
    assert m["counts"] == {"train": len(src.train), "val": len(src.val)}
    assert m["classes"] == src.classes and m["policy"]["write_mode"] == "raw"
    for split in ("train", "val"):
        images, labels = fb.read_samples(tmp_path / "b" / f"{split}.beton")
        s = src.split(split)
        assert np.array_equal(labels, s.labels)
        for i in range(len(s)):
            assert np.array_equal(images[i], s.image(i)), (split, i)


def test_jpeg_round_trip_keeps_labels_and_caps_resolution(roots, tmp_path):
    c = cfg("imagefolder", roots, write_mode="jpg", max_res=40, jpeg_quality=95)
    write(c, tmp_path / "b")
    src = data.load_source(c)
    images, labels = fb.read_samples(tmp_path / "b" / "train.beton")
    assert np.array_equal(labels, src.train.labels)
    assert max(max(im.shape[:2]) for im in images) == 40
    m = store.read_manifest(tmp_path / "b")
    assert m["policy"] == {"write_mode": "jpg", "max_res": 40, "jpeg_quality": 95}
    assert m["image_size"] is None and m["class_counts"]["train"] == [4, 4, 4]


# ---------------------------------------------------------------- loaders (built once)
@pytest.fixture(scope="module")
def loaders(roots):
    """key -> (train, val, info), built on first use and shared by the tests."""
    built: dict = {}

    def get(key, name, backend, **kw):
        if (key, backend) not in built:
            built[(key, backend)] = make_loaders(cfg(name, roots, backend=backend, **kw), seed=5)
        return built[(key, backend)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNLAB_CACHE", str(roots["base"] / "cache"))
        yield get


def batches(loader):
    out = [(x.clone(), y.clone()) for x, y in loader]  # FFCV reuses its output buffers
    if isinstance(loader, fb.FFCVLoader):
        ITERATED.add(loader.signature)
    return out


def test_digits_same_meaning_on_both_backends(loaders):
    tf, vf, info_f = loaders("digits", "digits", "ffcv", batch_size=64)
    tt, vt, info_t = loaders("digits", "digits", "torch", batch_size=64)
    assert info_f["fingerprint"] == info_t["fingerprint"]
    assert info_f["mean"] == info_t["mean"] and info_f["backend"] == "ffcv"
    for epoch in range(2):  # shuffled train: same seed -> same samples, same order
        bf, bt = batches(tf), batches(tt)
        assert len(bf) == len(bt) == len(tf) == len(tt)
        assert torch.equal(torch.cat([y for _, y in bf]), torch.cat([y for _, y in bt]))
        xf, xt = bf[0][0], bt[0][0]
        assert xf.shape == xt.shape == (64, 3, 32, 32) and xf.dtype == xt.dtype == torch.float32
        assert xf.is_contiguous(memory_format=torch.channels_last)
        assert xt.is_contiguous(memory_format=torch.channels_last)
        assert bf[0][1].dtype == bt[0][1].dtype == torch.int64
    # val: sequential, no augmentation -> the same normalised images
    bf, bt = batches(vf), batches(vt)
    assert torch.equal(torch.cat([y for _, y in bf]), torch.cat([y for _, y in bt]))
    assert torch.allclose(torch.cat([x for x, _ in bf]), torch.cat([x for x, _ in bt]), atol=1e-4)


def test_raw_sequential_cifar_is_exact_on_both_backends(loaders, roots):
    kw = dict(normalize=False, augment="none", shuffle=False, batch_size=8)
    tf, vf, _ = loaders("c10raw", "cifar10", "ffcv", **kw)
    tt, vt, _ = loaders("c10raw", "cifar10", "torch", **kw)
    src = data.load_source(cfg("cifar10", roots))
    for (lf, lt, s) in ((tf, tt, src.train), (vf, vt, src.val)):
        bf, bt = batches(lf), batches(lt)
        xf, xt = torch.cat([x for x, _ in bf]), torch.cat([x for x, _ in bt])
        assert xf.dtype == torch.uint8 and torch.equal(xf, xt)
        assert torch.equal(xf, torch.from_numpy(s.array[: len(xf)]).permute(0, 3, 1, 2))
        assert torch.equal(torch.cat([y for _, y in bf]), torch.cat([y for _, y in bt]))


def test_cifar_augmentation_is_pad_crop_flip_on_both_backends(loaders, roots):
    kw = dict(normalize=False, augment="cifar", shuffle=False, batch_size=8)
    src = data.load_source(cfg("cifar10", roots))
    padded = np.pad(src.train.array, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for backend in ("ffcv", "torch"):
        train, _, _ = loaders("c10aug", "cifar10", backend, **kw)
        x = torch.cat([x for x, _ in batches(train)]).permute(0, 2, 3, 1).numpy()
        flipped = 0
        for i, img in enumerate(x):
            windows = [padded[i, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
            plain = any(np.array_equal(img, w) for w in windows)
            mirrored = any(np.array_equal(img[:, ::-1], w) for w in windows)
            assert plain or mirrored, (backend, i)
            flipped += mirrored and not plain
        assert 0 < flipped < len(x), backend


def test_imagenet_style_same_meaning(loaders):
    kw = dict(train_res=32, val_res=32, batch_size=4, write_mode="raw")
    tf, vf, _ = loaders("ifnet", "imagefolder", "ffcv", **kw)
    tt, vt, _ = loaders("ifnet", "imagefolder", "torch", **kw)
    bf, bt = batches(tf), batches(tt)
    assert [x.shape for x, _ in bf] == [x.shape for x, _ in bt] == [(4, 3, 32, 32)] * 3
    assert torch.equal(torch.cat([y for _, y in bf]), torch.cat([y for _, y in bt]))
    bf, bt = batches(vf), batches(vt)
    assert torch.equal(torch.cat([y for _, y in bf]), torch.cat([y for _, y in bt]))
    xf, xt = torch.cat([x for x, _ in bf]), torch.cat([x for x, _ in bt])
    # centre crop + resize: OpenCV INTER_AREA vs antialiased bilinear, same pixels otherwise
    assert (xf - xt).abs().mean() < 0.15 and abs(xf.mean() - xt.mean()) < 0.05


def test_distributed_ranks_split_the_data(loaders, roots):
    c = cfg("digits", roots, backend="ffcv", batch_size=64)
    vals = [make_loaders(c, rank=r, world_size=2)[1] for r in range(2)]
    assert [v.num_samples for v in vals] == [180, 179]
    ft = make_loaders(c, rank=1, world_size=2)[0]
    tt = make_loaders(c.model_copy(update={"backend": "torch"}), rank=1, world_size=2)[0]
    assert len(ft) == len(tt) == 719 // 64
    want = epoch_indices(1438, shuffle=True, seed=0, epoch=3, rank=1, world_size=2, even=True)
    assert np.array_equal(ft.inner.traversal_order.sample_order(3), want)


# ---------------------------------------------------------------- writing: no-op, force, atomic
def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())
            if p.is_file() and p.name != ".lock"}


def test_cli_write_is_a_no_op_when_up_to_date_and_force_rewrites(roots, tmp_path, capsys):
    out = tmp_path / "b"
    args = ["write", "cifar10", "--root", str(roots["cifar10"]), "--out", str(out), "--quiet",
            "--workers", "1"]
    assert cli(args) == 0
    assert "wrote" in capsys.readouterr().out
    before = snapshot(out)
    assert set(before) == {"train.beton", "val.beton", "manifest.json"}
    assert cli(args) == 0
    assert "up to date" in capsys.readouterr().out and snapshot(out) == before
    assert cli(args + ["--force"]) == 0
    after = snapshot(out)
    assert after["train.beton"][0] != before["train.beton"][0]
    # other inputs into the same folder: refused, nothing touched
    with pytest.raises(SystemExit) as e:
        cli(args[:-2] + ["--write-mode", "jpg"])
    assert e.value.code == 2 and "--force" in capsys.readouterr().err
    assert snapshot(out) == after
    assert cli(["info", str(out)]) == 0
    assert '"dataset": "cifar10"' in capsys.readouterr().out


def test_interrupted_write_leaves_nothing_that_looks_complete(roots, tmp_path, monkeypatch):
    c = cfg("cifar10", roots)
    out = tmp_path / "b"
    write(c, out)
    before = snapshot(out)
    real = fb.write_split

    def dies_on_val(split, path, policy, **kw):
        if path.name.startswith(".val"):
            path.write_bytes(b"half a file")
            raise KeyboardInterrupt
        return real(split, path, policy, **kw)

    monkeypatch.setattr(fb, "write_split", dies_on_val)
    with pytest.raises(KeyboardInterrupt):
        write(c, out, force=True)
    assert snapshot(out) == before  # the complete old set is untouched, no partials left
    assert not (out / ".lock").exists()
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        write(c, fresh)
    assert not fresh.exists()  # the folder it created, lock included, is gone again
    # a writer killed outright leaves only a hidden partial: never read as complete
    monkeypatch.setattr(fb, "write_split", real)
    fresh.mkdir()
    (fresh / ".train.beton.partial-99999").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="no manifest.json"):
        make_loaders(DataConfig(dataset="cifar10", backend="ffcv", beton_dir=fresh))
    res = write(c, fresh)  # the next write cleans up and completes
    assert res.written and not list(fresh.glob(".*.partial-*"))


def test_unreadable_source_image_fails_the_write_cleanly(roots, tmp_path, capsys):
    root = tmp_path / "if"
    shutil.copytree(roots["imagefolder"], root)
    bad = root / "train" / "dog" / "dog_001.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    out = tmp_path / "b"
    with pytest.raises(SystemExit) as e:
        cli(["write", "imagefolder", "--root", str(root), "--out", str(out), "--quiet",
             "--workers", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.count("\n") == 1
    assert not out.exists()  # no lock, no partial, no empty folder left behind
    out.mkdir()
    with pytest.raises(SystemExit):
        cli(["write", "imagefolder", "--root", str(root), "--out", str(out), "--quiet",
             "--workers", "1", "--format", "jpeg"])
    assert sorted(p.name for p in out.iterdir()) == []  # an existing folder stays, emptied


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "manifest"])
def test_damaged_beton_is_a_one_line_error_and_left_alone(roots, tmp_path, capsys, damage):
    c = cfg("digits", roots)
    out = tmp_path / "b"
    write(c, out)
    target = out / ("manifest.json" if damage == "manifest" else "train.beton")
    raw = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(raw[: len(raw) // 2])
    elif damage == "corrupt":
        mid = len(raw) // 2
        target.write_bytes(raw[:mid] + bytes(b ^ 0xFF for b in raw[mid:mid + 64]) + raw[mid + 64:])
    else:
        target.write_text("{ not json")
    before = snapshot(out)
    expect = {"truncate": "truncated", "corrupt": "corrupted", "manifest": "not valid JSON"}[damage]
    with pytest.raises(ConfigError, match=expect) as e:
        make_loaders(DataConfig(dataset="digits", backend="ffcv", beton_dir=out, workers=1))
    assert str(target) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        cli(["info", str(out)])
    assert e.value.code == 2 and expect in capsys.readouterr().err
    assert snapshot(out) == before


def test_betons_alone_are_enough_and_must_match_the_root(roots, tmp_path):
    c = cfg("imagefolder", roots, train_res=32)
    out = tmp_path / "b"
    write(c, out)
    tr, va, info = make_loaders(DataConfig(dataset="imagefolder", backend="ffcv", beton_dir=out,
                                           train_res=32, workers=1))
    assert info["classes"] == ["cat", "dog", "emu"] and info["counts"] == {"train": 12, "val": 6}
    other = tmp_path / "other"
    shutil.copytree(roots["imagefolder"], other)
    (other / "train" / "cat" / "cat_000.jpg").unlink()
    with pytest.raises(ConfigError, match="written from other data"):
        make_loaders(DataConfig(dataset="imagefolder", root=other, backend="ffcv", beton_dir=out))
    with pytest.raises(ConfigError, match="holds 'imagefolder'"):
        make_loaders(DataConfig(dataset="cifar10", backend="ffcv", beton_dir=out))


def test_every_shipped_pipeline_builds_and_iterates_without_hanging(loaders, roots):
    """libffcv/ffcv#396: a jitted op after ToTorchImage hangs ``Loader()`` (in
    ``Graph.group_operations``).  Every pipeline we ship (4 styles x stored-size/resize x
    normalised/raw x train/val: 10 distinct ones) is checked for order, built and iterated
    for a batch under the time limit; pipelines the tests above already iterated count."""
    import ffcv.transforms as T

    with pytest.raises(AssertionError, match="#396"):
        fb.check_order([T.ToTensor(), T.ToTorchImage(), T.RandomHorizontalFlip()])
    c = cfg("synthetic", roots)
    folder, manifest = data.ensure_betons(c)
    stored = tuple(manifest["image_size"])
    shipped = set()
    for normalize in (True, False):
        for style in ("imagenet", "cifar", "digits", "none"):
            for res in (32, 24):  # stored size (plain decoder) or a resize (centre-crop one)
                c2 = c.model_copy(update=dict(augment=style, train_res=res, val_res=res,
                                              normalize=normalize, batch_size=8))
                plan = make_plan(c2, **data._meta_from_manifest(manifest))
                for split in ("train", "val"):
                    sp = plan.split(split)
                    pipe = fb.image_pipeline(sp.ops, plan, stored, torch.device("cpu"))
                    fb.check_order(pipe)
                    sig = tuple(type(op).__name__ for op in pipe)
                    if sig in shipped:
                        continue
                    shipped.add(sig)
                    if sig in ITERATED:
                        continue
                    ld = fb.FFCVLoader(folder / f"{split}.beton", sp, plan, stored_size=stored,
                                       count=manifest["counts"][split], device="cpu", rank=0,
                                       world_size=1)
                    x, y = next(iter(ld))
                    ITERATED.add(ld.signature)
                    assert x.shape == (8, 3, res, res), sig
                    assert x.dtype == (torch.float32 if normalize else torch.uint8), sig
                    assert y.shape == (8,) and y.dtype == torch.int64
    assert len(shipped) == 10 and shipped <= ITERATED


test_every_shipped_pipeline_builds_and_iterates_without_hanging = pytest.mark.timeout(240)(
    test_every_shipped_pipeline_builds_and_iterates_without_hanging)
