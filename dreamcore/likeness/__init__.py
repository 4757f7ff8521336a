"""Likeness score per checkpoint: which checkpoint looks most like the person, without squinting.

For each checkpoint, fixed-seed samples of the instance prompt (and a few variations) and of the class
prompt are compared with the training photos by a face-identity network (dlib, the ``dreamcore[faces]``
extra). Three numbers come out (:class:`CheckpointScore`): likeness, class drift and variety; the best
checkpoint is the most alike within bounds on the other two (:func:`select_best`).

Importing this package never needs the extra; :func:`scoring_available` says whether scoring can run
and, if not, how to enable it. Only embedding a face loads dlib.
"""

from dreamcore.likeness.evaluate import DEFAULT_PROMPT_VARIATIONS, evaluate_pipeline, expand_prompts
from dreamcore.likeness.faces import (SAME_PERSON_DISTANCE, SAME_PERSON_SIMILARITY, FaceEmbedding,
                                      ScoringUnavailableError, embed_faces, face_distance, identity_similarity,
                                      is_same_person, scoring_available)
from dreamcore.likeness.report import (format_table, load_report, plot_scores, run_report, save_report,
                                       scores_from_report)
from dreamcore.likeness.scores import (CheckpointScore, LikenessError, PhotoReference, PromptScore, embed_photos,
                                       image_variety, score_images, score_loaded_images, scores_from_json,
                                       scores_to_json)
from dreamcore.likeness.selection import (DEFAULT_DRIFT_BOUND, DEFAULT_VARIETY_BOUND, select_best,
                                          should_stop_early, within_bounds)
from dreamcore.likeness.tracker import LikenessTracker

__all__ = [
    "CheckpointScore", "DEFAULT_DRIFT_BOUND", "DEFAULT_PROMPT_VARIATIONS", "DEFAULT_VARIETY_BOUND", "FaceEmbedding",
    "LikenessError", "LikenessTracker", "PhotoReference", "PromptScore", "SAME_PERSON_DISTANCE",
    "SAME_PERSON_SIMILARITY", "ScoringUnavailableError", "embed_faces", "embed_photos", "evaluate_pipeline",
    "expand_prompts", "face_distance", "format_table", "identity_similarity", "image_variety", "is_same_person",
    "load_report", "plot_scores", "run_report", "save_report", "score_images", "score_loaded_images",
    "scores_from_json", "scores_from_report", "scores_to_json", "scoring_available", "select_best",
    "should_stop_early", "within_bounds",
]
