"""Photo preparation: from a folder of phone photos to the square, face-centred set the guide asks for.

``prepare_photos`` crops every photo around the face (EXIF-upright, any colour mode), reports per photo
(kept or rejected and why, face size, upscale, blur, near-duplicates) and for the set (count against the
guide's 13-20, variety of backgrounds and clothing, suggested max_train_steps, token check), and writes a
contact sheet. ``check_token`` tells whether a trigger word is one rare CLIP token.

Modules: ``faces`` (dlib detector), ``framing`` (where to crop, padding), ``quality`` (blur, perceptual
hash, look-alikes), ``token``, ``report``, ``contact_sheet``, ``pipeline``, ``command`` (the CLI).
"""

from dreamcore.prepare.pipeline import PrepareError, prepare_for_training, prepare_photos
from dreamcore.prepare.report import PhotoResult, PrepareReport
from dreamcore.prepare.token import TokenCheck, check_token

__all__ = ["PhotoResult", "PrepareError", "PrepareReport", "TokenCheck", "check_token",
           "prepare_for_training", "prepare_photos"]
