"""Is the trigger word a single rare token of the CLIP tokenizer?

DreamBooth binds the person to the token's embedding. A word that splits into pieces ("ukj" is "uk" + "j")
spreads the identity over common pieces that also mean other things ("uk" is the United Kingdom); a
common single word fights its existing meaning. A single token late in the BPE merge list is rare.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

# BPE merges are learned most-frequent first, so a whole-word token with a late id is rare. The last ~10k
# of CLIP's 49,408 ids are whole words seen only a few times in its training text.
RARE_TOKEN_MIN_ID = 38_000
# Single rare tokens the community uses; offered first when the tokenizer confirms they are still single.
KNOWN_GOOD_TOKENS = ("ohwx", "sks")
VOWELS = set("aeiouy")


@dataclass(frozen=True)
class TokenCheck:
    token: str
    pieces: list[str]
    ids: list[int]
    is_single: bool
    is_rare: bool
    message: str
    suggestions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.is_single and self.is_rare


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from dreamcore.assets import load_tokenizer

    return load_tokenizer()  # every family's first tokenizer is CLIP's BPE; only padding differs


def _encode(token: str) -> tuple[list[int], list[str]]:
    tokenizer = _tokenizer()
    ids = tokenizer(token, add_special_tokens=False).input_ids
    return ids, [piece.replace("</w>", "") for piece in tokenizer.convert_ids_to_tokens(ids)]


def check_token(token: str, suggestion_count: int = 5) -> TokenCheck:
    """Check ``token`` against the shipped CLIP tokenizer and suggest single rare tokens when it is not one."""
    word = token.strip()
    if not word or len(word.split()) != 1:
        raise ValueError(f"token must be one word without spaces, got {token!r} "
                         "(it is the rare word in 'photo of <token> person', e.g. ohwx)")
    ids, pieces = _encode(word)
    is_single = len(ids) == 1
    is_rare = is_single and ids[0] >= RARE_TOKEN_MIN_ID
    if is_rare:
        message = f"'{word}' is a single rare token (id {ids[0]}): a good trigger word"
    elif is_single:
        message = (f"'{word}' is a single token but a common one (id {ids[0]}); the model already gives it a "
                   "meaning that training must fight - prefer a rare one")
    else:
        message = (f"'{word}' is {len(ids)} tokens ({' + '.join(pieces)}) in the CLIP tokenizer; the person "
                   "gets spread over common pieces - prefer a word that is one rare token")
    suggestions = [] if is_rare else suggest_tokens(word, suggestion_count)
    return TokenCheck(token=word, pieces=pieces, ids=ids, is_single=is_single, is_rare=is_rare,
                      message=message, suggestions=suggestions)


def suggest_tokens(near: str, count: int = 5) -> list[str]:
    """Single rare tokens: up to two known-good ones, then vocabulary words of 3-4 consonants (unlikely to
    be real words) that start with the same letter as ``near`` first."""
    known = [candidate for candidate in KNOWN_GOOD_TOKENS if _is_single_rare(candidate)][:2]
    first_letter = near[:1].lower()
    found = []
    for piece, token_id in _tokenizer().get_vocab().items():
        if not piece.endswith("</w>") or token_id < RARE_TOKEN_MIN_ID:
            continue
        word = piece[:-4]
        if 3 <= len(word) <= 4 and word.isascii() and word.isalpha() and word.islower() \
                and not VOWELS & set(word) and word not in known:
            found.append((word[:1] != first_letter, -token_id, word))
    return (known + [word for _, _, word in sorted(found)])[:count]


def _is_single_rare(word: str) -> bool:
    ids, _ = _encode(word)
    return len(ids) == 1 and ids[0] >= RARE_TOKEN_MIN_ID
