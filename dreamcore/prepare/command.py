"""``python -m dreamcore prepare IN_DIR OUT_DIR``: crop a folder of photos around the face, with a report."""

from __future__ import annotations

import argparse

HELP = "crop a folder of photos square around the face, check the set against the guide, write a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("in_dir", metavar="IN_DIR", help="folder with the photos (never modified)")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="folder for the crops, report/prepare_report.json and report/contact_sheet.png "
                             "(new, empty, or written by an earlier prepare: it is replaced whole)")
    parser.add_argument("--size", type=int, default=512, help="side of the square crops in pixels (default 512)")
    parser.add_argument("--framing", choices=("portrait", "half", "full"), default="portrait",
                        help="portrait = head and shoulders (the guide's), half = to the waist, full = whole body")
    parser.add_argument("--keep-center-crop", action="store_true",
                        help="keep photos with no face or several faces as a centre crop instead of rejecting them")
    parser.add_argument("--pad", choices=("blur", "edge", "solid"), default="blur",
                        help="how to fill the square where the photo is too tight (default blur)")
    parser.add_argument("--token", default=None,
                        help="the trigger word you will train with (e.g. ohwx): checked against the CLIP tokenizer")


def run(args: argparse.Namespace) -> int:
    import sys

    from dreamcore.fileio import OutputWriteError
    from dreamcore.images import ImageLoadError
    from dreamcore.prepare.faces import DetectorUnavailableError
    from dreamcore.prepare.pipeline import PrepareError, prepare_photos

    def show_progress(index: int, total: int, path) -> None:
        print(f"[{index + 1}/{total}] {path.name}", file=sys.stderr, flush=True)

    try:
        report = prepare_photos(args.in_dir, args.out_dir, size=args.size, framing=args.framing,
                                keep_center_crop=args.keep_center_crop, token=args.token, pad_mode=args.pad,
                                progress=show_progress)
    except (PrepareError, ImageLoadError, OutputWriteError, DetectorUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.format_table())
    return 0 if report.kept else 1
