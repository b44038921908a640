"""Shared fixtures: a temporary stcore cache for every test, the raw-data mirror, loaded datasets.

* Every test runs with ``$STCORE_CACHE_DIR`` pointing at a temporary folder. By default it is one
  folder for the whole session (processed datasets are built once and shared); a test that needs a
  cache of its own asks for ``isolated_cache``.
* Tests that read real data ask for the ``mirror`` fixture (or carry ``@pytest.mark.mirror``). They
  use the mirror found by :func:`stcore._settings.mirror_dir`; without one they are skipped, unless
  ``STCORE_REQUIRE_MIRROR=1``, which turns the skip into a failure.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from stcore import _settings  # noqa: E402

# ------------------------------------------------------------------------------------------ mirror


def _mirror_or_skip() -> Path:
    try:
        mirror = _settings.mirror_dir()
        reason = (f"no raw-data mirror (set {_settings.MIRROR_ENV} or provide ../shared/data "
                  "beside the repository)")
    except FileNotFoundError as err:  # $STCORE_MIRROR names a missing folder
        mirror, reason = None, str(err)
    if mirror is None:
        if os.environ.get(_settings.REQUIRE_MIRROR_ENV) == "1":
            pytest.fail(f"{reason}, and {_settings.REQUIRE_MIRROR_ENV}=1", pytrace=False)
        pytest.skip(reason)
    return mirror


def pytest_collection_modifyitems(config, items):
    """Tests that use the mirror (directly or through a dataset fixture) carry the ``mirror`` marker."""
    for item in items:
        if "mirror" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("mirror"):
            item.add_marker(pytest.mark.mirror)


def pytest_runtest_setup(item):
    if item.get_closest_marker("mirror"):
        _mirror_or_skip()


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The raw-data mirror (skip, or fail with ``STCORE_REQUIRE_MIRROR=1``, when there is none)."""
    return _mirror_or_skip()


# ------------------------------------------------------------------------------------------- cache


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    """``$STCORE_CACHE_DIR`` for the whole session: a fresh temporary folder, never the user's cache."""
    path = tmp_path_factory.mktemp("stcore-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(_settings.CACHE_ENV, str(path))
        yield path


@pytest.fixture
def isolated_cache(monkeypatch, tmp_path) -> Path:
    """A cache of this test's own (for tests that inspect or break what gets cached)."""
    path = tmp_path / "cache"
    path.mkdir()
    monkeypatch.setenv(_settings.CACHE_ENV, str(path))
    return path


def _leftovers(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.name.endswith((".tmp", ".old"))]


@pytest.fixture
def leftovers():
    """``leftovers(root)``: temporary or half-replaced entries an atomic write must never leave."""
    return _leftovers


# ---------------------------------------------------------------------------------------- datasets


@pytest.fixture(scope="session")
def mob(mirror, session_cache):
    """The mouse olfactory bulb dataset, all 4 sections (loaded once per session)."""
    from stcore.data import load

    return load("mob")


@pytest.fixture(scope="session")
def her2st(mirror, session_cache):
    """her2st sections B4 and C2 (both with H&E), loaded once per session."""
    from stcore.data import load

    return load("her2st", sections=["B4", "C2"])


@pytest.fixture(scope="session")
def her2st_mixed(mirror, session_cache):
    """her2st A1 (labels, no image, train), B4 (image, train), E3 (val), G2 (labels, test)."""
    from stcore.data import load

    return load("her2st", sections=["A1", "B4", "E3", "G2"])


@pytest.fixture(scope="session")
def visium(mirror, session_cache):
    """The Space Ranger 1.0.0 format sample through ``load``."""
    from stcore.data import load

    return load("visium_format_sample")


# ------------------------------------------------------------------------ a mirror of one's own


class TmpMirror:
    """A throw-away mirror (``$STCORE_MIRROR`` points at it) holding copies or altered raw files.

    ``copy(path)`` copies a registered file from the real mirror; ``put(path, data)`` writes new
    bytes and registers their sha256 for this test only (so a broken file passes the checksum and
    reaches the reader).
    """

    def __init__(self, root: Path, source: Path, monkeypatch):
        self.root, self.source, self._mp = root, source, monkeypatch

    def copy(self, *paths: str) -> None:
        for path in paths:
            target = self.root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.source / path, target)

    def put(self, path: str, data: bytes) -> Path:
        from stcore.data import registry

        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        url = registry.file_registry().get(path, (None, None))[1]
        self._mp.setitem(registry.file_registry(), path, (registry.sha256(target), url))
        return target

    def read(self, path: str) -> bytes:
        """Bytes of the real mirror's file (decompressed when gzipped)."""
        data = (self.source / path).read_bytes()
        return gzip.decompress(data) if path.endswith(".gz") else data


@pytest.fixture
def tmp_mirror(mirror, tmp_path, monkeypatch, isolated_cache) -> TmpMirror:
    root = tmp_path / "mirror"
    root.mkdir()
    monkeypatch.setenv(_settings.MIRROR_ENV, str(root))
    return TmpMirror(root, mirror, monkeypatch)


def _her2st_files(section: str) -> list[str]:
    from stcore.data import registry

    paths = [f"her2st/ST-cnts/{section}.tsv.gz", f"her2st/ST-spotfiles/{section}_selection.tsv"]
    label = f"her2st/ST-pat/lbl/{section}_labeled_coordinates.tsv"
    return paths + ([label] if label in registry.file_registry() else [])


@pytest.fixture
def her2st_files():
    """``her2st_files(section)``: registry paths the her2st reader fetches (sections without image)."""
    return _her2st_files


# ------------------------------------------------------------------------------------------- torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on a shared 2-core machine, OpenMP threads that spin cost
    10–100×, and bitwise reproducibility on CPU holds for a fixed number of threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
