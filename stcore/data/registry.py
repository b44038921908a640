"""Dataset registry: metadata (``datasets.yaml``), raw files with sha256 (``registry.txt``), fetching.

Files are read from the local mirror when one is configured (``$STCORE_MIRROR``) and downloaded
with pooch into the cache otherwise. Either way the sha256 is checked before a file is used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pooch
import yaml

from .. import _settings
from ..errors import ChecksumError, DataError, UnknownDatasetError

_HERE = Path(__file__).parent


@dataclass(frozen=True)
class Dataset:
    """One registry entry (see ``datasets.yaml``)."""

    name: str
    title: str
    organism: str
    technology: str
    citation: str
    reader: str
    spot_diameter_um: float
    split_by: str
    split: dict
    sources: tuple = ()
    marker_gene: str | None = None
    label_key: str | None = None
    gene_panel: str | None = None
    annotation: str | None = None
    preprocess: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        """Registry paths of this dataset's raw files."""
        return sorted(p for p in file_registry() if p.startswith(f"{self.name}/"))

    def checksums(self) -> dict[str, str]:
        """``{path: sha256}`` of the raw files (what provenance records)."""
        return {p: file_registry()[p][0] for p in self.files}


@lru_cache
def datasets() -> dict[str, Dataset]:
    """All registered datasets by name."""
    raw = yaml.safe_load((_HERE / "datasets.yaml").read_text())
    known = set(Dataset.__dataclass_fields__)
    out = {}
    for name, entry in raw.items():
        kwargs = {k: v for k, v in entry.items() if k in known}
        extra = {k: v for k, v in entry.items() if k not in known}
        out[name] = Dataset(name=name, sources=tuple(entry.get("sources", ())), extra=extra,
                            **{k: v for k, v in kwargs.items() if k != "sources"})
    return out


def get(name: str) -> Dataset:
    """The registry entry of ``name``; a clear error lists the known names."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    try:
        return datasets()[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; registered: {', '.join(sorted(datasets()))}") from None


@lru_cache
def file_registry() -> dict[str, tuple[str, str | None]]:
    """``{path: (sha256, url or None)}`` parsed from ``registry.txt``."""
    out = {}
    for line in (_HERE / "registry.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, digest, *url = line.split()
        out[path] = (digest.removeprefix("sha256:"), url[0] if url else None)
    return out


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    return pooch.file_hash(str(path), alg="sha256")


def verify(path: str | Path, expected: str) -> Path:
    """Check ``path`` against ``expected`` sha256 (memoised by size and mtime); return the path."""
    path = Path(path)
    stat = path.stat()
    memo_file = _settings.cache_dir() / "verified.json"
    memo = json.loads(memo_file.read_text()) if memo_file.exists() else {}
    stamp = [stat.st_size, stat.st_mtime_ns, expected]
    if memo.get(str(path)) == stamp:
        return path
    actual = sha256(path)
    if actual != expected:
        raise ChecksumError(path, f"sha256 mismatch: expected {expected}, got {actual} "
                                  "(corrupt, truncated or replaced file)")
    memo[str(path)] = stamp
    tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo))
    os.replace(tmp, memo_file)
    return path


def fetch(path: str) -> Path:
    """Local path of a registered raw file, from the mirror or downloaded, checksum verified.

    Parameters
    ----------
    path
        Path inside the public release layout, e.g. ``"her2st/ST-cnts/A1.tsv.gz"``.
    """
    registry = file_registry()
    if path not in registry:
        raise DataError(path, "not in the stcore registry (stcore/data/registry.txt)")
    digest, url = registry[path]
    mirror = _settings.mirror_dir()
    if mirror is not None and (mirror / path).exists():
        return verify(mirror / path, digest)
    if url is None:
        where = f"mirror {mirror}" if mirror else f"no mirror (set {_settings.MIRROR_ENV})"
        raise DataError(path, f"not found in {where}, and it has no public download URL "
                              "(it is a conversion of a public source; see datasets.yaml)")
    downloads = _settings.cache_dir() / "downloads"
    local = pooch.retrieve(url, known_hash=f"sha256:{digest}", fname=Path(path).name,
                           path=downloads / Path(path).parent, progressbar=True)
    return Path(local)


def has_file(path: str) -> bool:
    """Whether a registered file can be had without the network (it is in the mirror)."""
    mirror = _settings.mirror_dir()
    return mirror is not None and (mirror / path).exists()
