"""Registry of model names -> builders. ``create_model(name, **options)``.

Continual X3D names carry the head window: ``cox3d_s_13``, ``cox3d_m_64``; any window works
(``cox3d_s_32``), and ``cox3d_xs`` uses the clip model's 4 frames.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Callable

from ..model import Model
from .x3d import x3d

MODELS: dict[str, Callable[..., Model]] = {}


def register(name: str, builder: Callable[..., Model]) -> None:
    MODELS[name] = builder


for _size in ("xs", "s", "m", "l"):
    register(f"x3d_{_size}", partial(x3d, _size, continual=False, name=f"x3d_{_size}"))
register("cox3d_xs", partial(x3d, "xs", continual=True, name="cox3d_xs"))
for _size, _windows in (("s", (13, 64)), ("m", (16, 64)), ("l", (16, 64))):
    for _w in _windows:
        register(f"cox3d_{_size}_{_w}", partial(x3d, _size, continual=True, window=_w, name=f"cox3d_{_size}_{_w}"))

_PATTERNS = [
    (re.compile(r"^cox3d_(xs|s|m|l)_(\d+)$"),
     lambda m: partial(x3d, m[1], continual=True, window=int(m[2]), name=m[0])),
]


def list_models() -> list[str]:
    return sorted(MODELS)


def create_model(name: str, **options) -> Model:
    """Build a registered model. ``options`` are the architecture's config fields (for X3D:
    ``se_scope``, ``temporal_fill``, ``num_classes``, ``head_activation``, ...)."""
    if name in MODELS:
        return MODELS[name](**options)
    for pattern, make in _PATTERNS:
        m = pattern.match(name)
        if m:
            return make(m)(**options)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())} (or cox3d_<size>_<window>)")


from . import r2plus1d, slowfast  # noqa: E402,F401  (clip baselines; they register themselves)
from . import resnet3d  # noqa: E402,F401  (Slow/CoSlow, I3D/CoI3D; registers itself)
