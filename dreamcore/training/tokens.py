"""The subject's rare token in the text encoder: which token ids name it, and training only their embeddings.

DreamBooth names the subject with a rare token ("sks", "ohwx"; "ukj" is two tokens) in an otherwise ordinary
prompt: the instance prompt is the class prompt plus that token. Training the token's embedding row (as
textual inversion does) lets the text encoder carry the new identity while every other word keeps the
meaning the base model gave it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import torch

from dreamcore.config import Concept
from dreamcore.training.setup import TrainingError


def identifier_token_ids(tokenizer: Any, concepts: Iterable[Concept]) -> list[int]:
    """The token ids of the instance prompts that their class prompts lack (the subjects' rare tokens)."""
    special = set(tokenizer.all_special_ids)
    identifiers: dict[int, None] = {}
    for concept in concepts:
        if not concept.class_prompt:
            raise TrainingError(f"train_token_embedding: the concept {concept.instance_prompt!r} has no class prompt; "
                                "give one (e.g. 'photo of a person'), so the rare token is the instance prompt's "
                                "word the class prompt lacks.")
        class_ids = set(tokenizer(concept.class_prompt).input_ids)
        own = [i for i in tokenizer(concept.instance_prompt).input_ids if i not in class_ids and i not in special]
        if not own:
            raise TrainingError(f"train_token_embedding: the instance prompt {concept.instance_prompt!r} has no word "
                                f"that the class prompt {concept.class_prompt!r} lacks; name the subject with a rare "
                                "token, e.g. 'photo of sks person' with the class prompt 'photo of a person'.")
        identifiers.update(dict.fromkeys(own))
    return list(identifiers)


def train_only_rows(weight: torch.nn.Parameter, rows: list[int]) -> None:
    """Let ``weight`` (an embedding matrix) train in the given rows only: its gradient is zero elsewhere, so
    AdamW without weight decay leaves the other rows exactly as they are (``parameter_groups`` gives it no decay)."""
    weight.requires_grad_(True)
    weight.trained_rows = rows  # parameter_groups puts it in a group of its own
    masks: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def keep_rows(grad: torch.Tensor) -> torch.Tensor:
        # made once per device and dtype, in an eager step: a recorded step (CUDA graph) only multiplies
        key = (grad.device, grad.dtype)
        if key not in masks:
            masks[key] = torch.zeros(grad.shape[0], 1, dtype=grad.dtype, device=grad.device)
            masks[key][rows] = 1
        return grad * masks[key]

    weight.register_hook(keep_rows)


def split_identifier_words(tokenizer: Any, concepts: Iterable[Concept]) -> dict[str, list[str]]:
    """The words of the instance prompts that their class prompts lack (the rare words naming a subject) and
    that the tokenizer cuts into several tokens ("ukj" -> "uk", "j"), each with its pieces. Such a word is
    learnt as a combination of common tokens, which carry meaning of their own."""
    split: dict[str, list[str]] = {}
    for concept in concepts:
        if not concept.class_prompt:
            continue  # without a class prompt the rare word cannot be told from the others
        class_words = set(_words(concept.class_prompt))
        for word in _words(concept.instance_prompt):
            if word in class_words or word in split:
                continue
            ids = tokenizer(word, add_special_tokens=False).input_ids
            if len(ids) > 1:
                split[word] = [token.removesuffix("</w>") for token in tokenizer.convert_ids_to_tokens(ids)]
    return split


def _words(prompt: str) -> list[str]:
    return re.findall(r"[\w']+", prompt.lower())
