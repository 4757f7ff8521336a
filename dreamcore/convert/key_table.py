"""A key table: explicit pairs of module prefixes between the diffusers and the original (ldm) layouts.

Each entry maps one module of the diffusers model (``down_blocks.0.resnets.1``) to the module of the
original Stable Diffusion layout that holds the same weights (``input_blocks.2.0``), with an explicit
renaming of the sub-modules inside it where their names differ (a diffusers ResNet's ``norm1`` is the
original's ``in_layers.0``). A key that no entry covers is an error naming the key: nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from dreamcore.convert.errors import ModelLoadError


@dataclass(frozen=True)
class ModuleEntry:
    """One module in both layouts; ``leaf_names`` maps diffusers sub-module paths to original ones.

    ``leaf_names`` None means the sub-module names are the same in both layouts (SD's transformer blocks).
    ``reshape_to_conv`` lists diffusers sub-modules stored as Linear weights (2-D) whose original is a
    1x1 convolution (4-D): the VAE's attention projections.
    """

    diffusers: str
    original: str
    leaf_names: Mapping[str, str] | None = None
    reshape_to_conv: frozenset[str] = field(default_factory=frozenset)


class KeyTable:
    """Renames keys between layouts using a list of ``ModuleEntry``; both directions, loud on unknowns."""

    def __init__(self, entries: list[ModuleEntry], what: str, model: str = "a Stable Diffusion 1.x/2.x model"):
        self.what = what  # e.g. "UNet", used in error messages
        self.model = model  # what the layout belongs to, for error messages
        self.entries = tuple(entries)
        self._by_diffusers = {entry.diffusers: entry for entry in entries}
        self._by_original = {entry.original: entry for entry in entries}
        if len(self._by_diffusers) != len(entries) or len(self._by_original) != len(entries):
            raise AssertionError(f"{what} key table maps two modules to one place")

    def to_original(self, key: str) -> tuple[str, bool]:
        """The original-layout key for a diffusers key, and whether the tensor must become a 1x1 conv."""
        entry, rest = _match(key, self._by_diffusers)
        if entry is None:
            raise ModelLoadError(f"{self.what} key {key!r} has no place in the original Stable Diffusion layout "
                                 "(the key table does not know this module); this model's architecture is not "
                                 "one dreamcore can export")
        module, param = _split_leaf(rest)
        if entry.leaf_names is None:
            return _join(entry.original, rest), False
        if module not in entry.leaf_names:
            raise ModelLoadError(f"{self.what} key {key!r}: sub-module {module!r} of {entry.diffusers!r} is not in "
                                 "the key table; this model's architecture is not one dreamcore can export")
        return _join(entry.original, _join(entry.leaf_names[module], param)), module in entry.reshape_to_conv

    def to_diffusers(self, key: str) -> tuple[str, bool]:
        """The diffusers key for an original-layout key, and whether the 1x1 conv must become a Linear."""
        entry, rest = _match(key, self._by_original)
        if entry is None:
            raise ModelLoadError(f"unexpected {self.what} key {key!r}: it is not part of {self.model} of this "
                                 "layout")
        module, param = _split_leaf(rest)
        if entry.leaf_names is None:
            return _join(entry.diffusers, rest), False
        inverse = {original: diffusers for diffusers, original in entry.leaf_names.items()}
        if module not in inverse:
            raise ModelLoadError(f"unexpected {self.what} key {key!r}: sub-module {module!r} is not part of "
                                 f"{self.model} of this layout")
        return _join(entry.diffusers, _join(inverse[module], param)), inverse[module] in entry.reshape_to_conv


def _match(key: str, table: Mapping[str, ModuleEntry]) -> tuple[ModuleEntry | None, str]:
    """The entry with the longest module prefix of ``key`` (on dot boundaries) and the rest of the key."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        entry = table.get(".".join(parts[:cut]))
        if entry is not None:
            return entry, ".".join(parts[cut:])
    return None, key


def _split_leaf(rest: str) -> tuple[str, str]:
    module, _, param = rest.rpartition(".")
    return module, param


def _join(prefix: str, rest: str) -> str:
    return f"{prefix}.{rest}" if prefix and rest else prefix or rest
