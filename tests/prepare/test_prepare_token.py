"""check_token against the shipped CLIP tokenizer: the guide's "ukj" is two tokens, suggestions are one."""

from __future__ import annotations

import pytest

from dreamcore.assets import load_tokenizer
from dreamcore.prepare import check_token
from dreamcore.prepare.token import RARE_TOKEN_MIN_ID


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("sd1")


def _ids(tokenizer, word: str) -> list[int]:
    return tokenizer(word, add_special_tokens=False).input_ids


def test_guides_ukj_is_two_tokens_and_alternatives_are_single_rare_tokens(tokenizer) -> None:
    check = check_token("ukj")
    assert check.pieces == ["uk", "j"] and len(check.ids) == 2
    assert not check.is_single and not check.ok
    assert "2 tokens (uk + j)" in check.message
    assert len(check.suggestions) == 5 and len(set(check.suggestions)) == 5
    assert check.suggestions[:2] == ["ohwx", "sks"]
    for suggestion in check.suggestions:
        ids = _ids(tokenizer, suggestion)
        assert len(ids) == 1 and ids[0] >= RARE_TOKEN_MIN_ID, suggestion
        # the same phrase the guide trains on stays one token for the name
        assert len(_ids(tokenizer, f"photo of {suggestion} person")) == 4
    # Generated suggestions prefer the user's first letter.
    assert check.suggestions[2].startswith("u") or not any(
        s.startswith("u") for s in check.suggestions[2:])


@pytest.mark.parametrize("token", ["sks", "ohwx", "OHWX"])
def test_single_rare_tokens_pass(token: str) -> None:
    check = check_token(token)
    assert check.ok and check.is_single and check.is_rare
    assert check.suggestions == []
    assert "single rare token" in check.message


def test_common_single_word_is_flagged_as_common() -> None:
    check = check_token("photo")
    assert check.is_single and not check.is_rare and not check.ok
    assert "common" in check.message and check.suggestions


@pytest.mark.parametrize("token", ["", "  ", "two words"])
def test_not_one_word_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="one word"):
        check_token(token)
