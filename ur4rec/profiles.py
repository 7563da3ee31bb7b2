"""Report profiles: a name that picks a shipped config.

``quick`` is tiny and fast (tests, nbval, smoke runs); ``full`` is the ML-100K default. Notebooks
take a ``profile`` parameter and call :func:`profile_config`, so one papermill parameter switches
the whole chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ur4rec.config import CONFIG_DIR, Config, load_config, parse_overrides
from ur4rec.errors import ConfigError

PROFILE_CONFIGS = {"quick": CONFIG_DIR / "quick.yaml", "full": CONFIG_DIR / "ur4rec_moe_100k.yaml"}


def profile_config_path(profile: str) -> Path:
    if profile not in PROFILE_CONFIGS:
        raise ConfigError(
            f"Unknown profile '{profile}'.", where="profile", fix=f"use one of {sorted(PROFILE_CONFIGS)}"
        )
    return PROFILE_CONFIGS[profile]


def profile_config(
    profile: str = "full",
    config_path: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    config_overrides: dict[str, Any] | list[str] | None = None,
) -> Config:
    """The config a notebook runs with: ``config_path`` if given, else the profile's config.

    ``config_overrides`` come from the report run (``overrides`` in an ``-f`` parameters file or
    ``--set``) and apply to every notebook; ``overrides`` are the notebook's own parameters and win.
    """
    path = Path(config_path) if config_path else profile_config_path(profile)
    as_dict = {}
    for part in (config_overrides, overrides):
        as_dict |= part if isinstance(part, dict) else parse_overrides(part)
    return load_config(path, as_dict)
