"""attnlab.blocks — attention modules behind one registry, backbones, and insertion.

Pure PyTorch (+ torchvision); knows nothing of data, Ray or MLflow.

    >>> import blocks
    >>> blocks.names()                       # every registered attention
    >>> blocks.create("se", 64)              # a stage block, (N,64,H,W) -> (N,64,H,W)
    >>> blocks.build_model("resnet50", 1000, attention={"kind": "cbam"})
    >>> blocks.build_model("resnet50", 100, attention="nonlocal", pretrained="resnet50.pth")
    ...                                      # a local torchvision checkpoint; fc skipped (100 ≠ 1000)
"""
from .registry import SLOTS, BlockEntry, UnknownBlockError, check_params, create, get, names, register

# Importing a block file registers it.  One file per paper family.
from . import se  # noqa: F401,E402 (imported for its side effect (registration), after the registry above)
from . import ltpa, pyramid  # noqa: F401,E402 (imported for its side effect (registration), after the registry above)
from . import nonlocal_  # noqa: F401,E402 (imported for its side effect (registration), after the registry above)
from . import danet  # noqa: F401,E402 (imported for its side effect (registration), after the registry above)
from . import spa  # noqa: F401,E402 (imported for its side effect (registration), after the registry above)
from . import gaussian, spatial_weights  # noqa: F401,E402 (imported for its side effect (registration), after the registry above)
from . import gsa  # noqa: F401,E402 (imported for its side effect (registration), after the registry above)
from . import cbam, ssa  # noqa: F401,E402 (imported for its side effect (registration), after the registry above)

from .backbones import backbone_names, build_backbone  # noqa: E402 (after the set-up above, which must run first)
from .insert import AttentionSpec, build_model, resolve_spec  # noqa: E402 (after the set-up above, which must run first)

__all__ = [
    "AttentionSpec",
    "backbone_names",
    "build_backbone",
    "build_model",
    "resolve_spec",
    "SLOTS",
    "BlockEntry",
    "UnknownBlockError",
    "check_params",
    "create",
    "get",
    "names",
    "register",
]
