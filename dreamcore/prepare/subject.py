"""Whether the photos show a person: decided from the prompts, with the word list kept here only.

A person's photos are cropped around the face, and a photo in which no face is found gets a warning.
For any other subject (a dog, a mug, a style) faces are not expected: each photo is cropped around its
salient region, unless a face is found in it anyway (the list below cannot name every word for a person:
"astronaut", "grandpa", "wizard"), in which case the crop is around that face.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Words that make a prompt's subject a person. Matched as whole words, case-insensitive, so "1girl" (the
# anime-model style) and "woman's" count and "manga" or "boyfriend" do not.
PERSON_WORDS = frozenset({
    "person", "persons", "people", "human", "humans", "man", "men", "woman", "women", "boy", "boys",
    "girl", "girls", "child", "children", "kid", "kids", "baby", "babies", "toddler", "teen", "teenager",
    "adult", "guy", "guys", "lady", "ladies", "gentleman", "gentlemen", "male", "female", "face", "faces",
    "selfie", "someone",
})  # not "portrait": "a portrait of my dog" is a dog


@dataclass(frozen=True)
class Subject:
    """What the photos show, as far as preparing them is concerned.

    ``is_person``: True when a prompt names a person (or nothing was said: the guide's subject is a
    person); ``described_by``: the prompt text the decision came from ("" when nothing was said).
    """

    is_person: bool
    described_by: str = ""

    @property
    def name(self) -> str:
        """How messages refer to the subject: 'a person' or the prompt that named it."""
        if not self.described_by:
            return "a person"
        return f"'{self.described_by}'"


def subject_from_prompts(instance_prompt: str = "", class_prompt: str = "") -> Subject:
    """The subject the prompts name: the class prompt decides when there is one (it names the class;
    "photo of sks man's watch" is a watch when the class prompt says "photo of a watch"), else the instance
    prompt. A person when that prompt contains a word of :data:`PERSON_WORDS`, or when both prompts are
    empty (photo preparation's first purpose, and the guide's subject); anything else is not a person.
    """
    deciding = (class_prompt or "").strip() or (instance_prompt or "").strip()
    if not deciding:
        return Subject(is_person=True)
    return Subject(is_person=names_a_person(deciding), described_by=deciding)


def names_a_person(prompt: str) -> bool:
    """True when ``prompt`` contains one of :data:`PERSON_WORDS` as a whole word."""
    return any(word in PERSON_WORDS for word in re.findall(r"[a-z]+", prompt.casefold()))
