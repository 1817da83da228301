"""Pretrained backbones from a local torchvision checkpoint: keys, values, logits, errors."""
import pytest
import torch

import blocks
from conftest import needs_torchvision

pytestmark = needs_torchvision

STAGE = blocks.names("stage")
X_SHAPE = (2, 3, 61, 45)  # odd, non-square


def randomise_tv(net: torch.nn.Module, seed: int = 0) -> None:
    """Weights and BN statistics away from their initial values (as a trained net has them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bn1.weight") or ".bn" in name or "downsample.1" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


@pytest.fixture(scope="module")
def tv50(tmp_path_factory):
    """A randomised torchvision ResNet-50 (float64, eval) and its state dict saved to a file."""
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    randomise_tv(net)
    path = tmp_path_factory.mktemp("ckpt") / "resnet50.pth"
    torch.save(net.state_dict(), path)
    return net.double().eval(), path


def attention_keys(m: torch.nn.Module) -> set[str]:
    """State-dict keys of the tensors that belong to the model's attention modules."""
    ids = {id(t) for a in m.attention_modules for t in [*a.parameters(), *a.buffers()]}
    return {k for k, v in m.state_dict(keep_vars=True).items() if id(v) in ids}


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_keys_and_shapes_are_torchvisions(depth):
    import torchvision

    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    ours = blocks.build_model(f"resnet{depth}", 1000)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}


def test_baseline_loads_with_torchvisions_logits(tv50):
    tv, path = tv50
    m = blocks.build_model("resnet50", 1000, pretrained=path)
    sd = torch.load(path, weights_only=True)
    own = m.state_dict()
    assert own.keys() == sd.keys()
    assert all(torch.equal(own[k], sd[k]) for k in sd)
    m = m.double().eval()
    x = torch.randn(*X_SHAPE, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), tv(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", STAGE)
def test_attention_models_miss_only_their_own_keys(tv50, name):
    _, path = tv50
    sd = torch.load(path, weights_only=True)
    m = blocks.build_model("resnet50", 1000, attention=name)
    res = m.load_state_dict(sd, strict=False)
    own = attention_keys(m)
    # BN fills in an absent num_batches_tracked itself (old checkpoints lack it): not reported
    assert own and set(res.missing_keys) == {k for k in own if not k.endswith("num_batches_tracked")}
    if m.attention_spec.slot == "replace_conv":  # the replaced 3×3 convs: their weights have no place
        assert res.unexpected_keys and all(k.endswith(".conv2.weight") for k in res.unexpected_keys)
    else:
        assert res.unexpected_keys == []
    # and through build_model: the backbone takes the checkpoint, the attention keeps its init
    torch.manual_seed(3)
    init = blocks.build_model("resnet50", 1000, attention=name)
    torch.manual_seed(3)
    loaded = blocks.build_model("resnet50", 1000, attention=name, pretrained=path)
    loaded_sd, init_sd = loaded.state_dict(), init.state_dict()
    for k, v in loaded_sd.items():
        assert torch.equal(v, init_sd[k] if k in own else sd[k]), k


def starts_as_identity(name: str) -> bool:
    m = blocks.create(name, 16).double().eval()
    x = torch.randn(2, 16, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        return torch.equal(m(x), x)


IDENTITY = [n for n in STAGE if starts_as_identity(n)]


def test_which_blocks_start_as_identity():
    # zero-initialised output BN γ (nonlocal, spa, gaussian) or residual scale (pam, cam, danet)
    assert set(IDENTITY) == {"nonlocal", "spa", "gaussian", "pam", "cam", "danet"}


@pytest.mark.parametrize("name", IDENTITY)
def test_identity_blocks_keep_the_pretrained_logits(tv50, name):
    tv, path = tv50
    m = blocks.build_model("resnet50", 1000, attention=name, pretrained=path).double().eval()
    assert m.attention_modules
    x = torch.randn(*X_SHAPE, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), tv(x), rtol=1e-10, atol=1e-10)


def test_other_class_count_skips_fc_with_a_warning(tv50):
    _, path = tv50
    sd = torch.load(path, weights_only=True)
    with pytest.warns(UserWarning, match=r"fc skipped \(checkpoint has 1000 classes, the model 10\)"):
        m = blocks.build_model("resnet50", 10, attention="se", pretrained=path)
    own = m.state_dict()
    assert own["fc.weight"].shape == (10, 2048)
    assert all(torch.equal(own[k], sd[k]) for k in sd if not k.startswith("fc."))


def test_model_level_attention_takes_the_backbone(tv50, recwarn):
    _, path = tv50
    sd = torch.load(path, weights_only=True)
    m = blocks.build_model("resnet50", 10, attention={"kind": "pyramid", "dim": 8}, pretrained=path)
    assert not recwarn.list  # its own classifier replaces fc: nothing to warn about
    own = m.backbone.state_dict()
    assert all(torch.equal(own[k], sd[k]) for k in own)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module.", "plain"])
def test_checkpoint_wrappers(tv50, tmp_path, wrap):
    _, path = tv50
    sd = torch.load(path, weights_only=True)
    obj = {"module." + k: v for k, v in sd.items()} if wrap == "module." else sd
    if wrap in ("state_dict", "model"):
        obj = {wrap: sd, "epoch": 90}
    torch.save(obj, tmp_path / "c.pth")
    m = blocks.build_model("resnet50", 1000, pretrained=tmp_path / "c.pth")
    assert torch.equal(m.state_dict()["layer4.2.bn3.running_var"], sd["layer4.2.bn3.running_var"])


def one_line_error(exc_type, match, **kwargs):
    with pytest.raises(exc_type, match=match) as e:
        blocks.build_model(**kwargs)
    assert "\n" not in str(e.value)


def test_bad_checkpoints_are_one_line_errors(tv50, tmp_path):
    import torchvision

    _, path = tv50
    sd = torch.load(path, weights_only=True)
    missing = {k: v for k, v in sd.items() if k != "layer2.1.conv1.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    one_line_error(ValueError, r"missing layer2\.1\.conv1\.weight; unexpected none",
                   backbone="resnet50", num_classes=1000, pretrained=tmp_path / "missing.pth")
    torch.save({**sd, "head.weight": torch.zeros(3)}, tmp_path / "extra.pth")
    one_line_error(ValueError, r"missing none; unexpected head\.weight",
                   backbone="resnet50", num_classes=1000, pretrained=tmp_path / "extra.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    one_line_error(ValueError, r"does not fit backbone 'resnet50': missing .*conv3.*unexpected none",
                   backbone="resnet50", num_classes=1000, pretrained=tmp_path / "r18.pth")
    one_line_error(ValueError, r"shape \(checkpoint vs model\) differs for conv1\.weight \(64, 3, 7, 7\) vs \(64, 3, 3, 3\)",
                   backbone="resnet50", num_classes=1000, small_stem=True, pretrained=path)
    one_line_error(FileNotFoundError, "is not a file", backbone="resnet50", num_classes=1000,
                   pretrained=tmp_path / "nope.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    one_line_error(ValueError, "expected a state dict", backbone="resnet50", num_classes=1000,
                   pretrained=tmp_path / "list.pth")


@pytest.mark.parametrize("slot", ["gate", "after_block", "stage_end", "replace_conv"])
def test_cifar_checkpoint_of_our_own_keys_loads_under_every_slot(tmp_path, slot):
    base = blocks.build_model("cifar_resnet20", 10)
    randomise_tv(base)
    torch.save(base.state_dict(), tmp_path / "c20.pth")
    m = blocks.build_model("cifar_resnet20", 10, attention={"kind": "se", "slot": slot}, pretrained=tmp_path / "c20.pth")
    own, sd = m.state_dict(), base.state_dict()
    shared = own.keys() & sd.keys()
    assert shared and all(torch.equal(own[k], sd[k]) for k in shared)
    assert own.keys() - sd.keys() == attention_keys(m)
