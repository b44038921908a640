"""Image patches around spots, in a memory-mapped array store beside the processed AnnData."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .._io import atomic_dir, content_key
from ..errors import DataError
from . import registry
from .images import read_image

log = logging.getLogger("stcore")


@dataclass
class PatchStore:
    """Patches of the spots that have an image: ``images[i]`` belongs to ``obs_names[i]``."""

    path: Path
    images: np.ndarray  # (n, out_px, out_px, 3) uint8, memory-mapped
    obs_names: np.ndarray
    meta: dict

    def __len__(self) -> int:
        return len(self.obs_names)

    def get(self, names) -> np.ndarray:
        """Patches of the given obs names, in that order."""
        index = {n: i for i, n in enumerate(self.obs_names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise KeyError(f"{len(missing)} spots have no patch (no image?), e.g. {missing[:3]}")
        return self.images[[index[n] for n in names]]

    @classmethod
    def open(cls, path: str | Path) -> PatchStore:
        """Open an existing store read-only (memory-mapped)."""
        path = Path(path)
        return cls(path, np.load(path / "patches.npy", mmap_mode="r"),
                   np.load(path / "obs_names.npy", allow_pickle=False),
                   json.loads((path / "meta.json").read_text()))


def patch_size_px(adata: ad.AnnData, slide_id: str, *, size_px: int | None, size_um: float | None) -> int:
    """Crop side in full-resolution pixels, given either pixels or micrometres (not both)."""
    if (size_px is None) == (size_um is None):
        raise ValueError("give exactly one of size_px or size_um")
    if size_px is not None:
        if not isinstance(size_px, (int, np.integer)) or size_px <= 0:
            raise TypeError(f"size_px must be a positive int, got {size_px!r}")
        return int(size_px)
    if not isinstance(size_um, (int, float)) or size_um <= 0:
        raise TypeError(f"size_um must be a positive number, got {size_um!r}")
    spot_um = registry.get(adata.uns["stcore"]["dataset"]).spot_diameter_um
    spot_px = adata.uns["spatial"][slide_id]["scalefactors"]["spot_diameter_fullres"]
    return max(2, int(round(size_um * spot_px / spot_um)))


def extract_patches(adata: ad.AnnData, *, size_px: int | None = None, size_um: float | None = None,
                    out_px: int = 224, store_dir: str | Path | None = None) -> PatchStore:
    """Crop a square around every spot of every section with an H&E image, resize to ``out_px``.

    Sections without an image are excluded and logged. The store is cached under
    ``store_dir`` (default: beside the cached AnnData) in a folder keyed by the AnnData's cache key,
    the sections and the parameters; a second call with the same inputs reads it back.

    Returns
    -------
    :class:`PatchStore` with files ``patches.npy`` (n × out_px × out_px × 3, uint8),
    ``obs_names.npy`` and ``meta.json`` (parameters, crop size per section, excluded sections).
    """
    if not isinstance(out_px, (int, np.integer)) or out_px <= 0:
        raise TypeError(f"out_px must be a positive int, got {out_px!r}")
    info = adata.uns.get("stcore", {})
    slides = list(adata.obs["slide_id"].cat.categories if hasattr(adata.obs["slide_id"], "cat")
                  else adata.obs["slide_id"].unique())
    key = content_key(info.get("key"), list(adata.obs_names), size_px, size_um, out_px)
    if store_dir is None:
        if "key" not in info:
            raise ValueError("adata was not made by stcore.data.load; pass store_dir=")
        from .load import processed_dir
        store_dir = processed_dir(info["dataset"], info["key"])
    final = Path(store_dir) / f"patches-{key}"
    if (final / "meta.json").exists():
        return PatchStore.open(final)

    with_image = [s for s in slides if adata.uns["spatial"][s]["images"]]
    excluded = [s for s in slides if s not in with_image]
    if excluded:
        log.warning("patches: %d sections excluded, no H&E image: %s", len(excluded), ", ".join(excluded))
    if not with_image:
        raise DataError(info.get("dataset", "adata"), "no section has an H&E image; nothing to crop")
    rows = np.flatnonzero(adata.obs["slide_id"].isin(with_image).to_numpy())
    crop = {s: patch_size_px(adata, s, size_px=size_px, size_um=size_um) for s in with_image}
    with atomic_dir(final) as tmp:
        out = np.lib.format.open_memmap(tmp / "patches.npy", mode="w+", dtype=np.uint8,
                                        shape=(len(rows), out_px, out_px, 3))
        names = adata.obs_names[rows].to_numpy().astype(str)
        position = {n: i for i, n in enumerate(names)}
        bar = tqdm(total=len(rows), desc="patches", unit="spot")
        for slide in with_image:
            image, scale = _fullres_or_hires(adata.uns["spatial"][slide])
            members = np.flatnonzero(adata.obs["slide_id"].to_numpy() == slide)
            side = max(2, int(round(crop[slide] * scale)))
            for i in members:
                out[position[adata.obs_names[i]]] = crop_patch(
                    image, adata.obsm["spatial"][i] * scale, side, out_px)
            bar.update(len(members))
            del image
        bar.close()
        out.flush()
        del out
        np.save(tmp / "obs_names.npy", names)
        meta = {"size_px": size_px, "size_um": size_um, "out_px": out_px, "crop_px": crop,
                "excluded_sections": excluded, "n": int(len(rows)), "adata_key": info.get("key")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return PatchStore.open(final)


def _fullres_or_hires(entry: dict) -> tuple[np.ndarray, float]:
    """The full-resolution H&E when the registry has it, else the stored hires image and its scale."""
    source = entry.get("metadata", {}).get("image")
    if source:
        return read_image(registry.fetch(source))[0], 1.0
    log.info("patches: no full-resolution image; cropping from the hires image")
    hires = np.asarray(entry["images"]["hires"])[..., :3]
    if hires.dtype != np.uint8:  # PNGs read by squidpy/scanpy are float in [0, 1]
        hires = np.clip(np.round(hires * 255 if hires.max() <= 1 else hires), 0, 255).astype(np.uint8)
    return hires, float(entry["scalefactors"]["tissue_hires_scalef"])


def crop_patch(image: np.ndarray, centre, side: int, out_px: int) -> np.ndarray:
    """Square of ``side`` pixels centred on ``centre`` (x, y), padded white at borders, resized."""
    h, w = image.shape[:2]
    x0, y0 = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    patch = np.full((side, side, 3), 255, np.uint8)
    xs, ys = max(x0, 0), max(y0, 0)
    xe, ye = min(x0 + side, w), min(y0 + side, h)
    if xe > xs and ye > ys:
        patch[ys - y0:ye - y0, xs - x0:xe - x0] = image[ys:ye, xs:xe]
    if side == out_px:
        return patch
    return np.asarray(Image.fromarray(patch).resize((out_px, out_px), Image.Resampling.BILINEAR))
