"""The Lua scripts every reader library runs (readers/lua), shipped inside
the package; a source checkout reads them from readers/lua directly."""

from __future__ import annotations

import hashlib
from importlib.resources import files
from pathlib import Path


def _text(name: str) -> str:
    shipped = files("cdc_cache") / "lua" / name
    if shipped.is_file():
        return shipped.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[3] / "lua" / name).read_text(encoding="utf-8")


READ_LUA = _text("read.lua")
RELEASE_LUA = _text("release.lua")
READ_SHA = hashlib.sha1(READ_LUA.encode()).hexdigest()
RELEASE_SHA = hashlib.sha1(RELEASE_LUA.encode()).hexdigest()
