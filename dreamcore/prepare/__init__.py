"""Photo preparation: from a folder of phone photos to the square set the guide asks for.

``prepare_photos`` crops every photo (EXIF-upright, any colour mode) around the face, or, without one,
around its salient region - a person's photos are expected to show a face, a dog's or a mug's are not
(``subject_from_prompts`` tells which from the prompts). It reports per photo (kept or rejected and why,
what the crop is around, face size, upscale, blur, near-duplicates) and for the set (count, whether one
person is shown throughout, variety of backgrounds and clothing, suggested max_train_steps, token check),
and writes a contact sheet. ``check_token`` tells whether a trigger word is one rare CLIP token.

Modules: ``subject`` (is it a person), ``faces`` (dlib detector), ``saliency`` (where the subject is
without a face), ``framing`` (where to crop, padding), ``quality`` (blank, blur, perceptual hash,
look-alikes), ``same_person`` (face identity across the set), ``token``, ``report``, ``contact_sheet``,
``pipeline``, ``command`` (the CLI).
"""

from dreamcore.prepare.pipeline import OptionHints, PrepareError, prepare_for_training, prepare_photos
from dreamcore.prepare.report import PhotoResult, PrepareReport
from dreamcore.prepare.subject import PERSON_WORDS, Subject, subject_from_prompts
from dreamcore.prepare.token import TokenCheck, check_token

__all__ = ["OptionHints", "PERSON_WORDS", "PhotoResult", "PrepareError", "PrepareReport", "Subject", "TokenCheck",
           "check_token", "prepare_for_training", "prepare_photos", "subject_from_prompts"]
