"""Where stcore finds raw data and keeps its cache (environment variables first)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

MIRROR_ENV = "STCORE_MIRROR"
CACHE_ENV = "STCORE_CACHE_DIR"
REQUIRE_MIRROR_ENV = "STCORE_REQUIRE_MIRROR"
REPO_ROOT = Path(__file__).resolve().parent.parent


def mirror_dir() -> Path | None:
    """The local download mirror: ``$STCORE_MIRROR``, else ``../shared/data`` beside the repository.

    Returns ``None`` when neither exists (files are then downloaded with pooch).
    """
    env = os.environ.get(MIRROR_ENV)
    if env:
        path = Path(env).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"{MIRROR_ENV}={env}: not a directory")
        return path
    default = REPO_ROOT.parent / "shared" / "data"
    return default if default.is_dir() else None


def cache_dir() -> Path:
    """Cache for downloads and processed data: ``$STCORE_CACHE_DIR`` or the platform cache dir."""
    path = Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("stcore"))
    path.mkdir(parents=True, exist_ok=True)
    return path
