"""How the host shows an error it caught: printed, and (A1111, Forge) kept among the last five records that
its UI and extensions can read. SD.Next only logs (no ``exception_records``)."""

from __future__ import annotations

import os
import sys
import traceback

if os.environ.get("DREAMCORE_STANDIN_FLAVOR", "a1111") != "sdnext":
    exception_records: list[dict] = []


def display(error: BaseException, task: str) -> None:
    records = globals().get("exception_records")
    if records is not None:
        records.append({"exception": str(error),
                        "traceback": traceback.format_tb(error.__traceback__)})
        del records[:-5]
    print(f"{task}: {type(error).__name__}: {error}", file=sys.stderr)
