"""Figures: H&E with spots (through squidpy), spot layouts without image, patch grids."""

from __future__ import annotations

import logging
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


def setup_notebook(*, dpi: int = 80) -> None:
    """What every notebook of the grid sets first: stcore's warnings shown, figure resolution."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    plt.rcParams["figure.dpi"] = dpi


def show(fig: plt.Figure) -> None:
    """Display a figure in a notebook whatever the matplotlib backend, then release it."""
    from IPython.display import display

    display(fig)
    plt.close(fig)


def save(fig: plt.Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Save a figure as PNG atomically (parents created)."""
    path = Path(path)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _sections(adata: ad.AnnData, sections: list[str] | None) -> list[str]:
    known = list(adata.obs["slide_id"].cat.categories)
    return known if sections is None else [s for s in known if s in sections]


def missing_by_section(table: pd.DataFrame) -> plt.Figure:
    """Bar chart of each section's missing fraction (``table``: index section, columns
    ``missing fraction`` and ``split``)."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * len(table)), 2.8))
    sns.barplot(x=table.index.astype(str), y=table["missing fraction"], hue=table["split"].astype(str),
                dodge=False, ax=ax)
    ax.set_xlabel("section")
    ax.set_ylabel("missing entries")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    ax.legend(title="split", fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def moran_distribution(moran: pd.DataFrame, *, key: str = "d_log1p_moran") -> plt.Figure:
    """Histogram of genes' mean Moran's I, selected genes highlighted (``moran['selected']``)."""
    fig, ax = plt.subplots(figsize=(5, 2.8))
    data = moran.assign(gene=np.where(moran["selected"], "selected", "not selected"))
    sns.histplot(data, x=key, hue="gene", bins=40, multiple="stack", ax=ax,
                 hue_order=["not selected", "selected"])
    ax.set_xlabel("Moran's I (mean over sections)")
    fig.tight_layout()
    return fig


def embedding_grid(embeddings: dict[str, np.ndarray], obs: pd.DataFrame, colors: list[str]) -> plt.Figure:
    """Scatter of each 2-D embedding (columns) coloured by each obs column (rows)."""
    colors = list(dict.fromkeys(colors))
    fig, axes = plt.subplots(len(colors), len(embeddings), squeeze=False,
                             figsize=(3.4 * len(embeddings), 3.0 * len(colors)))
    for row, color in zip(axes, colors):
        levels = obs[color].astype(str)
        n = levels.nunique()
        palette = dict(zip(sorted(levels.unique()), sns.color_palette("tab10" if n <= 10 else "tab20", n)))
        for ax, (name, xy) in zip(row, embeddings.items()):
            ax.scatter(xy[:, 0], xy[:, 1], s=2, c=[palette[v] for v in levels], linewidths=0,
                       rasterized=True)
            ax.set_title(f"{name} · {color}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        if len(palette) <= 12:
            handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=l) for l, c in palette.items()]
            row[-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5),
                           frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def expression_maps(adata: ad.AnnData, section: str, genes: list[str], panels: dict[str, np.ndarray],
                    *, missing: dict[str, np.ndarray] | None = None) -> plt.Figure:
    """Spot layouts of one section: a row per gene, a column per expression matrix in ``panels``.

    Each row shares one colour scale. ``missing[name]`` (bool, n_obs × n_vars) marks entries drawn
    as grey crosses in that panel instead of a value.
    """
    missing = missing or {}
    rows = (adata.obs["slide_id"] == section).to_numpy()
    obs = adata.obs.loc[rows]
    fig, axes = plt.subplots(len(genes), len(panels), squeeze=False,
                             figsize=(2.6 * len(panels) + 0.8, 2.5 * len(genes)))
    for ax_row, gene in zip(axes, genes):
        j = adata.var_names.get_loc(gene)
        shown = [np.asarray(m)[rows, j][~np.asarray(missing.get(n, np.zeros_like(m, bool)))[rows, j]]
                 for n, m in panels.items()]
        vmin, vmax = np.nanpercentile(np.concatenate(shown), [1, 99])
        for ax, (name, matrix) in zip(ax_row, panels.items()):
            gone = np.asarray(missing.get(name, np.zeros_like(matrix, bool)))[rows, j]
            values = np.asarray(matrix)[rows, j]
            points = ax.scatter(obs["array_col"][~gone], obs["array_row"][~gone], c=values[~gone],
                                s=14, cmap="viridis", vmin=vmin, vmax=vmax, linewidths=0)
            ax.scatter(obs["array_col"][gone], obs["array_row"][gone], marker="x", s=8,
                       c="0.7", linewidths=0.6)
            ax.set_title(f"{gene} · {name}", fontsize=9)
            ax.set_aspect("equal")
            ax.invert_yaxis()
            ax.axis("off")
        fig.colorbar(points, ax=ax_row.tolist(), shrink=0.8)
    fig.suptitle(f"section {section}", fontsize=10)
    return fig


def training_curve(history: pd.DataFrame, *, best_step: int | None = None) -> plt.Figure:
    """Train loss and validation MSE against the step (``history`` columns step, train_loss, val_mse)."""
    fig, ax = plt.subplots(figsize=(5, 2.8))
    for column in ("train_loss", "val_mse"):
        if column in history:
            data = history.dropna(subset=[column])
            ax.plot(data["step"], data[column], label=column.replace("_", " "))
    if best_step is not None:
        ax.axvline(best_step, color="0.5", ls="--", lw=0.8, label=f"best step {best_step}")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def metric_by_rate(scores: pd.DataFrame, *, metrics: list[str]) -> plt.Figure:
    """Each metric against the masking rate, a line per method (mean ± sd over seeds), a row per split."""
    splits = list(dict.fromkeys(scores["split"]))
    fig, axes = plt.subplots(len(splits), len(metrics), squeeze=False,
                             figsize=(3.3 * len(metrics) + 1.6, 2.8 * len(splits)))
    for ax_row, split in zip(axes, splits):
        data = scores[scores["split"] == split]
        for ax, metric in zip(ax_row, metrics):
            sns.lineplot(data, x="fraction", y=metric, hue="method", errorbar="sd", marker="o",
                         ax=ax, legend=ax is ax_row[-1])
            ax.set_title(f"{split} · {metric}", fontsize=9)
            ax.set_xlabel("hidden fraction of observed entries")
        if ax_row[-1].get_legend():
            sns.move_legend(ax_row[-1], "center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                            fontsize=7)
    fig.tight_layout()
    return fig
