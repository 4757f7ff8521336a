"""The folders a job submitted through the REST API may read and write.

A request names paths on the server: photos, base model, class images (which training writes). Through the
API each must lie inside a folder the server was told to allow (its output folder, the host's model and
photo folders, ``--allow-dir``), symbolic links followed. A refusal reads the same whether the path exists or
not, and nothing outside those folders is looked at, so the API cannot be used to probe the disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from dreamcore.config import HUB_REPO_ID, ConfigError, TrainConfig

# Settings holding local paths; the model fields may also hold a Hugging Face hub id instead.
PATH_FIELDS = ("instance_data_dir", "class_data_dir", "concepts_list", "tokenizer_name", "resume_from_checkpoint")
MODEL_FIELDS = ("pretrained_model_name_or_path", "pretrained_vae_name_or_path")


class AllowedFolders:
    """Folders (resolved once, links followed) and the words that tell a caller how to allow another."""

    def __init__(self, folders: Iterable[str | Path], how_to_allow: str = "start the server with --allow-dir FOLDER"):
        self.folders = tuple(dict.fromkeys(Path(os.path.realpath(Path(folder).expanduser())) for folder in folders))
        if not self.folders:
            raise ValueError("AllowedFolders: give at least one folder (e.g. the output folder)")
        self.how_to_allow = how_to_allow

    def contains(self, value: str) -> bool:
        """Whether ``value`` is an absolute path inside an allowed folder. Links are followed first, so a link
        inside pointing outside is outside."""
        if not Path(value).is_absolute():
            return False
        real = Path(os.path.realpath(value))
        return any(real == folder or real.is_relative_to(folder) for folder in self.folders)

    def problems(self, config: TrainConfig) -> list[str]:
        """One line per path setting outside the allowed folders; empty when all are inside."""
        problems = []
        for name in MODEL_FIELDS:
            value = getattr(config, name)
            if value and not is_hub_id(value) and not self.contains(value):
                problems.append(self._refusal(name, value))
        for name in PATH_FIELDS:
            value = getattr(config, name)
            if value and not (name == "resume_from_checkpoint" and value == "latest") and not self.contains(value):
                problems.append(self._refusal(name, value))
        if config.concepts_list and self.contains(config.concepts_list):
            # Its entries name folders too; a file that cannot be read is reported by the settings check.
            try:
                concepts = config.concepts()
            except ConfigError:
                concepts = []
            for index, concept in enumerate(concepts, start=1):
                for name in ("instance_data_dir", "class_data_dir"):
                    value = getattr(concept, name)
                    if value and not self.contains(value):
                        problems.append(self._refusal(f"concepts_list entry {index} {name}", value))
        return problems

    def _refusal(self, name: str, value: str) -> str:
        # The same words for a path that exists and one that does not.
        folders = ", ".join(str(folder) for folder in self.folders)
        return (f"{name}: {value!r} is not inside a folder this server allows; give an absolute path inside "
                f"{folders} (to allow another folder, {self.how_to_allow}).")


def is_hub_id(value: str) -> bool:
    """A Hugging Face hub id ("owner/name"), which the API never looks up on the disk."""
    return bool(HUB_REPO_ID.match(value)) and not any(part in (".", "..") for part in value.split("/"))
