"""Reading count tables and checking raw inputs; every error names the file and the problem."""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError

log = logging.getLogger("stcore")


def read_count_table(path: str | Path) -> pd.DataFrame:
    """Read a spots × genes count table (tab-separated, optionally gzipped) and check it.

    Raises :class:`~stcore.errors.DataError` for unreadable, truncated or non-gzip files,
    empty tables, duplicate spots or genes, non-numeric, negative or non-integer counts.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, sep="\t", index_col=0, compression="infer", engine="c")
    except gzip.BadGzipFile as err:
        raise DataError(path, f"not a gzip file ({err})") from err
    except OSError as err:
        raise DataError(path, f"unreadable ({err})") from err
    except (EOFError, zlib.error) as err:
        raise DataError(path, f"truncated or corrupt gzip stream ({err})") from err
    except pd.errors.EmptyDataError as err:
        raise DataError(path, "empty file: no spots") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(path, f"not a tab-separated count table ({err})") from err
    check_counts(frame, path)
    # pandas renames duplicate column names ("A", "A" -> "A", "A.1"): check the header as written
    genes = _header(path)
    if genes is not None and len(genes) == frame.shape[1]:
        _unique(pd.Index(genes), path, "genes")
    return frame


def check_counts(frame: pd.DataFrame, path: str | Path) -> None:
    """Raise :class:`DataError` unless ``frame`` holds non-negative integer counts with unique labels."""
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise DataError(path, f"empty section: {frame.shape[0]} spots × {frame.shape[1]} genes")
    _unique(frame.index, path, "spot barcodes")
    _unique(frame.columns, path, "genes")
    bad = [c for c, t in frame.dtypes.items() if not np.issubdtype(t, np.number)]
    if bad:
        raise DataError(path, f"non-numeric counts in {len(bad)} genes, e.g. {bad[:3]}")
    values = frame.to_numpy()
    if np.isnan(values).any():
        raise DataError(path, f"{int(np.isnan(values).sum())} missing (NaN) counts")
    if (values < 0).any():
        spot, gene = _first(values < 0, frame)
        raise DataError(path, f"negative counts ({int((values < 0).sum())} entries, e.g. spot "
                              f"{spot!r}, gene {gene!r})")
    if not np.issubdtype(values.dtype, np.integer) and (values != np.round(values)).any():
        spot, gene = _first(values != np.round(values), frame)
        raise DataError(path, f"non-integer counts (e.g. spot {spot!r}, gene {gene!r}); raw counts "
                              "are expected, not normalised values")


def match_spots(counts: pd.Index, positions: pd.Index, *, counts_file, positions_file,
                strict: bool = False) -> pd.Index:
    """Spots present in both the count table and the spot-position file, in count-table order.

    Spots with counts but no position are always an error (they cannot be placed). Spots with a
    position but no counts are logged and dropped (the her2st release has 33 of them), or an
    error with ``strict=True``.
    """
    no_position = counts.difference(positions)
    if len(no_position):
        raise DataError(positions_file, f"{len(no_position)} spots of {Path(counts_file).name} have "
                                         f"no position here, e.g. {list(no_position[:3])}")
    no_counts = positions.difference(counts)
    if len(no_counts):
        message = (f"{len(no_counts)} spots have a position but no counts in "
                   f"{Path(counts_file).name}, e.g. {list(no_counts[:3])}")
        if strict:
            raise DataError(positions_file, message)
        log.info("%s: %s; dropped", positions_file, message)
    return counts


def check_inside(xy: np.ndarray, shape: tuple[int, int], *, path, names) -> None:
    """Raise unless every pixel centre ``xy`` (x, y) lies inside an image of ``shape`` (h, w)."""
    h, w = shape
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= w) | (xy[:, 1] < 0) | (xy[:, 1] >= h)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise DataError(path, f"{int(outside.sum())} spot centres lie outside the {w}×{h} px image, "
                              f"e.g. spot {names[i]!r} at ({xy[i, 0]:.1f}, {xy[i, 1]:.1f})")


def _header(path: Path) -> list[str] | None:
    """Column names in the first line of a plain or gzipped table (``None`` for other compressions)."""
    if path.suffix in (".bz2", ".xz", ".zip", ".zst", ".tar"):
        return None
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as fh:
        return fh.readline().rstrip("\r\n").split("\t")[1:]


def _unique(index: pd.Index, path, what: str) -> None:
    dup = index[index.duplicated()]
    if len(dup):
        raise DataError(path, f"duplicate {what}: {list(dup.unique()[:5])}")


def _first(mask: np.ndarray, frame: pd.DataFrame) -> tuple:
    i, j = np.argwhere(mask)[0]
    return frame.index[i], frame.columns[j]
