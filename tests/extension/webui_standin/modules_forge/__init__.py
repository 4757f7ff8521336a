"""Forge's own package; importable only in the Forge flavor of the stand-in."""

import os

if os.environ.get("DREAMCORE_STANDIN_FLAVOR") != "forge":
    raise ImportError("modules_forge exists only in Forge")
