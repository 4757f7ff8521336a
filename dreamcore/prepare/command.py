"""``python -m dreamcore prepare IN_DIR OUT_DIR``: crop a folder of photos square around the subject, with a
report. The crops are as large as the model family you will train trains at (``--family``, or read from the base
model with ``--model``), so training uses them as they are."""

from __future__ import annotations

import argparse

HELP = ("crop a folder of photos square around the face (or, without one, around the subject), check the set "
        "against the guide, write a report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # the registry imports neither torch nor diffusers: --help stays instant
    from dreamcore.families.registry import DEFAULT_FAMILY, FAMILIES, FAMILY_NAMES

    resolutions = ", ".join(f"{family.label} {family.training_resolution}" for family in FAMILIES.values())
    parser.add_argument("in_dir", metavar="IN_DIR", help="folder with the photos (never modified)")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="folder for the crops, report/prepare_report.json and report/contact_sheet.png "
                             "(new, empty, or written by an earlier prepare: it is replaced whole)")
    parser.add_argument("--size", type=int, default=None,
                        help="side of the square crops in pixels (default: the resolution the model family of "
                             f"--family or --model trains at: {resolutions}; {DEFAULT_FAMILY.label}'s without "
                             "either)")
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--family", choices=FAMILY_NAMES, default=None,
                      help="the model family you will train, for the crops' size")
    base.add_argument("--model", metavar="PATH", default=None,
                      help="the base model you will train (a .safetensors/.ckpt file or a diffusers folder): the "
                           "crops get its family's size, the family read from the model's files as training "
                           "reads it")
    parser.add_argument("--subject", default="", metavar="TEXT",
                        help="what the photos show, as your class prompt says it (e.g. 'dog', 'photo of a "
                             "woman'; default: a person). A person's photos are cropped around the face (one "
                             "without a face around its salient region, with a warning); any other subject's "
                             "around the salient region, or around a face where one is found")
    parser.add_argument("--framing", choices=("portrait", "half", "full"), default="portrait",
                        help="around a face: portrait = head and shoulders (the guide's), half = to the "
                             "waist, full = whole body; photos without a face keep their whole short side")
    parser.add_argument("--keep-center-crop", action="store_true",
                        help="crop photos without a face at the centre instead of around the salient region, "
                             "and keep a person's photos that show several people as a centre crop instead "
                             "of rejecting them")
    parser.add_argument("--require-face", action="store_true",
                        help="reject photos in which no face is found, instead of keeping them cropped "
                             "around the salient region")
    parser.add_argument("--pad", choices=("blur", "edge", "solid"), default="blur",
                        help="how to fill the square where the photo is too tight (default blur)")
    parser.add_argument("--token", default=None,
                        help="the trigger word you will train with (e.g. ohwx): checked against the CLIP tokenizer")


def run(args: argparse.Namespace) -> int:
    import sys

    from dreamcore.convert.errors import ModelLoadError
    from dreamcore.fileio import OutputWriteError
    from dreamcore.images import ImageLoadError
    from dreamcore.prepare.sizing import crop_size
    from dreamcore.prepare.faces import DetectorUnavailableError
    from dreamcore.prepare.pipeline import OptionHints, PrepareError, prepare_photos
    from dreamcore.prepare.subject import subject_from_prompts

    def show_progress(index: int, total: int, path) -> None:
        print(f"[{index + 1}/{total}] {path.name}", file=sys.stderr, flush=True)

    # Every way out a rejection suggests is one of this command's flags (see add_arguments).
    hints = OptionHints(keep_several_faces="or use --keep-center-crop to keep it as a centre crop",
                        keep_without_face="or leave out --require-face to keep it, cropped around the "
                                          "salient region")
    try:
        size = crop_size(args.size, args.family, args.model)
        report = prepare_photos(args.in_dir, args.out_dir, size=size.pixels, framing=args.framing,
                                keep_center_crop=args.keep_center_crop, token=args.token, pad_mode=args.pad,
                                progress=show_progress, subject=subject_from_prompts(class_prompt=args.subject),
                                require_face=args.require_face, hints=hints, size_reason=size.reason)
    except (PrepareError, ImageLoadError, OutputWriteError, DetectorUnavailableError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.format_table())
    return 0 if report.kept else 1
