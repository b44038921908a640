"""H&E images: safe decoding and the ``uns['spatial']`` entry that scanpy/squidpy expect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

HIRES_PX = 2000
LOWRES_PX = 600


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image without decoding its pixels."""
    with _open(path) as img:
        return img.size[1], img.size[0]


def read_image(path: str | Path, *, max_side: int | None = None) -> tuple[np.ndarray, float]:
    """Decode an RGB image, optionally downscaled so that its longer side is ``max_side``.

    Returns the ``uint8`` array (h, w, 3) and the scale factor from full resolution.
    JPEGs are decoded at reduced scale (``draft``) when downscaling, which is much faster.
    """
    with _open(path) as img:
        full_w, full_h = img.size
        scale = 1.0 if max_side is None else min(1.0, max_side / max(full_w, full_h))
        target = (max(1, round(full_w * scale)), max(1, round(full_h * scale)))
        try:
            if scale < 1.0:
                img.draft("RGB", target)
            img = img.convert("RGB")
            if img.size != target:
                img = img.resize(target, Image.Resampling.LANCZOS)
            return np.asarray(img), target[0] / full_w
        except (OSError, ValueError) as err:
            raise DataError(path, f"truncated or corrupt image ({err})") from err


def spatial_entry(path: str | Path | None, spot_diameter_px: float, *, source: str | None = None) -> dict:
    """``uns['spatial'][library_id]`` for one section: hires/lowres images and scale factors.

    With ``path=None`` (no image for this section) the entry has no images, only scale factors,
    and ``metadata['image']`` is ``None``.
    """
    entry = {"images": {}, "scalefactors": {"spot_diameter_fullres": float(spot_diameter_px)},
             "metadata": {"image": source}}
    if path is None:
        return entry
    hires, s_hi = read_image(path, max_side=HIRES_PX)
    lowres, s_lo = read_image(path, max_side=LOWRES_PX)
    h, w = image_size(path)
    entry["images"] = {"hires": hires, "lowres": lowres}
    entry["scalefactors"].update(tissue_hires_scalef=s_hi, tissue_lowres_scalef=s_lo)
    entry["metadata"].update(fullres_height=h, fullres_width=w)
    return entry


def _open(path):
    Image.MAX_IMAGE_PIXELS = 400_000_000  # her2st full-resolution H&E are ~92 Mpx; files are checksummed
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(path, f"unreadable image ({err})") from err
