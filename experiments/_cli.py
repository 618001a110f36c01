"""Helpers shared by the experiment command lines."""

from __future__ import annotations

import json


def parse_options(items: list[str], flag: str = "--model-arg") -> dict:
    """``["KEY=VALUE", ...]`` -> dict; values are parsed as JSON where they parse (numbers,
    booleans, lists), else kept as strings. Raises ``ValueError`` naming ``flag`` on a malformed item."""
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            opts[key.strip()] = json.loads(value.strip())
        except json.JSONDecodeError:
            opts[key.strip()] = value.strip()
    return opts
