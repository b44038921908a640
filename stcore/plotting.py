"""Figures: H&E with spots (through squidpy), spot layouts without image, patch grids."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ._io import atomic_file


def spots_on_he(adata: ad.AnnData, color: str, *, sections: list[str] | None = None,
                ncols: int = 3, title: str | None = None, **kwargs) -> plt.Figure:
    """H&E (hires) of each section that has an image, spots coloured by ``color``.

    ``color`` is an obs column or a gene (``kwargs`` go to :func:`squidpy.pl.spatial_scatter`).
    """
    import squidpy as sq

    with_image = [s for s in _sections(adata, sections) if adata.uns["spatial"][s]["images"]]
    if not with_image:
        raise ValueError("none of the chosen sections has an H&E image")
    subset = adata[adata.obs["slide_id"].isin(with_image)]
    sq.pl.spatial_scatter(subset, color=color, library_key="slide_id", library_id=with_image,
                          img_res_key="hires", ncols=min(ncols, len(with_image)),
                          title=[f"{s}: {title or color}" for s in with_image], **kwargs)
    return plt.gcf()


def spot_layout(adata: ad.AnnData, color: str, *, sections: list[str] | None = None,
                ncols: int = 6, cmap: str = "viridis") -> plt.Figure:
    """Small multiples of spot layouts on the array grid (no image), coloured by an obs column.

    Numeric columns get a shared colour scale; categorical ones a shared legend.
    """
    chosen = _sections(adata, sections)
    nrows = int(np.ceil(len(chosen) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.2 * nrows), squeeze=False)
    column = adata.obs[color]
    categorical = not pd.api.types.is_numeric_dtype(column)
    if categorical:
        levels = list(column.astype("category").cat.categories)
        palette = dict(zip(levels, sns.color_palette("tab10", len(levels))))
        colours = np.array([palette.get(v, (0.85, 0.85, 0.85)) for v in column], dtype=float)
    else:
        values = column.to_numpy(float)
        vmin, vmax = np.nanpercentile(values, [1, 99])
    for ax, slide in zip(axes.flat, chosen):
        mask = (adata.obs["slide_id"] == slide).to_numpy()
        obs = adata.obs.loc[mask]
        style = {"c": colours[mask]} if categorical else \
            {"c": values[mask], "cmap": cmap, "vmin": vmin, "vmax": vmax}
        points = ax.scatter(obs["array_col"], obs["array_row"], s=9, linewidths=0, **style)
        ax.set_title(slide, fontsize=9)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.axis("off")
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    if categorical:
        handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=l) for l, c in palette.items()]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    else:
        fig.colorbar(points, ax=axes, shrink=0.6, label=color)
    return fig


def patch_grid(images: np.ndarray, titles: list[str], *, ncols: int = 8) -> plt.Figure:
    """A grid of image patches with a short title each."""
    nrows = int(np.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.75 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image)
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Save a figure as PNG atomically (parents created)."""
    path = Path(path)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _sections(adata: ad.AnnData, sections: list[str] | None) -> list[str]:
    known = list(adata.obs["slide_id"].cat.categories)
    return known if sections is None else [s for s in known if s in sections]
