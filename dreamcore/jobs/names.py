"""Job names: each names a folder under the jobs root, so a name must never reach outside it."""

from __future__ import annotations

import re

# Letters, digits, '.', '_' and '-'; starts with a letter or digit (so never '.', '..' or a hidden file);
# never ends with '.' (Windows drops a trailing dot, which would alias another job's folder).
_JOB_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9_-])?")
# Names Windows reserves for devices, whatever the extension.
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


class JobNameError(ValueError):
    """A job name that cannot be used as a folder name under the jobs root."""


def check_job_name(name: object) -> str:
    """Return ``name`` if it is a safe job name; raise JobNameError saying what is allowed otherwise."""
    if not isinstance(name, str):
        raise JobNameError(f"job name: expected text, got {type(name).__name__}.")
    if not _JOB_NAME.fullmatch(name):
        raise JobNameError(
            f"job name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit and not ending with '.' (no spaces, slashes or '..'), e.g. 'anna-sd15'.")
    if name.split(".")[0].lower() in _WINDOWS_DEVICES:
        raise JobNameError(f"job name {name!r} is a device name on Windows; choose another name.")
    return name
