"""Importing this module registers every built-in dataset (one module per dataset kind)."""
from . import cifar, digits, folder, synthetic, tiny_imagenet  # noqa: F401 (imported for its side effect (registration) or to check that it imports)
