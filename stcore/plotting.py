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
                    *, missing: dict[str, np.ndarray] | None = None, on_he: bool = False) -> plt.Figure:
    """Spots of one section: a row per gene, a column per expression matrix in ``panels``.

    Each row shares one colour scale. ``missing[name]`` (bool, n_obs × n_vars) marks entries drawn
    as grey crosses in that panel instead of a value. ``on_he``: draw the spots at their pixel
    positions (``obsm['spatial']``) over the section's hires H&E (``uns['spatial']``) instead of
    on the array grid.
    """
    missing = missing or {}
    rows = (adata.obs["slide_id"] == section).to_numpy()
    if on_he:
        entry = adata.uns["spatial"][section]
        if "hires" not in entry.get("images", {}):
            raise ValueError(f"section {section} has no hires H&E image")
        image = entry["images"]["hires"]
        xy = np.asarray(adata.obsm["spatial"], float)[rows, :2] * \
            entry["scalefactors"]["tissue_hires_scalef"]
        pad = 0.6 * entry["scalefactors"]["spot_diameter_fullres"] * \
            entry["scalefactors"]["tissue_hires_scalef"]
        (x0, y0), (x1, y1) = xy.min(0) - pad, xy.max(0) + pad
    else:
        xy = adata.obs.loc[rows, ["array_col", "array_row"]].to_numpy(float)
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
            if on_he:
                ax.imshow(image)
                ax.set_xlim(x0, x1)
                ax.set_ylim(y1, y0)
            points = ax.scatter(xy[~gone, 0], xy[~gone, 1], c=values[~gone], s=14, cmap="viridis",
                                vmin=vmin, vmax=vmax, linewidths=0, alpha=0.85 if on_he else 1)
            ax.scatter(xy[gone, 0], xy[gone, 1], marker="x", s=8, c="0.7", linewidths=0.6)
            ax.set_title(f"{gene} · {name}", fontsize=9)
            ax.set_aspect("equal")
            if not on_he:
                ax.invert_yaxis()
            ax.axis("off")
        fig.colorbar(points, ax=ax_row.tolist(), shrink=0.8)
    fig.suptitle(f"section {section}", fontsize=10)
    return fig


def training_curve(history: pd.DataFrame, *, best_step: int | None = None) -> plt.Figure:
    """Train loss and validation MSE against the step (columns step, train_loss, val_mse or val_loss)."""
    fig, ax = plt.subplots(figsize=(5, 2.8))
    for column in ("train_loss", "val_mse", "val_loss"):
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


def per_gene_pcc(genes: pd.DataFrame, *, by: str = "section") -> plt.Figure:
    """Box plots of per-gene PCC (``genes`` columns ``pcc`` and ``by``), one box per ``by`` value;
    NaN PCCs (constant genes) are left out and their count is in the title."""
    data = genes.dropna(subset=["pcc"])
    fig, ax = plt.subplots(figsize=(1.1 * genes[by].nunique() + 2.5, 3))
    sns.boxplot(data=data, x=by, y="pcc", ax=ax, color="0.85", fliersize=0, linewidth=0.8)
    sns.stripplot(data=data, x=by, y="pcc", ax=ax, size=2, alpha=0.5, color="C0")
    ax.axhline(0, color="0.5", lw=0.8, ls="--")
    ax.set_ylabel("PCC per gene")
    ax.set_title(f"{len(data)} gene × {by} values ({len(genes) - len(data)} undefined)", fontsize=9)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def ci_text(mean: float, low: float, high: float, *, digits: int = 3) -> str:
    """``"mean [low, high]"``; ``"mean"`` without bounds; ``"—"`` when the mean is undefined."""
    if pd.isna(mean):
        return "—"
    if pd.isna(low) or pd.isna(high):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def ci_table(table: pd.DataFrame, metrics: list[str], *, columns: list[str], index: str = "model",
             digits: int = 3, order: list[str] | None = None) -> pd.DataFrame:
    """Wide table of ``"mean [low, high]"`` cells (:func:`ci_text` of ``metric``,
    ``metric_low``, ``metric_high``): a row per ``index`` value (``order``, else order of
    appearance), a column per metric × combination of the ``columns`` values (labels joined by
    " · ", the metric left out when there is one; in order of appearance, so sort ``table`` by
    ``columns`` first to choose it). No run: empty cell."""
    columns = [columns] if isinstance(columns, str) else list(columns)
    frames = []
    for metric in metrics:
        prefix = [metric] if len(metrics) > 1 else []
        frames.append(pd.DataFrame({
            index: table[index].to_numpy(),
            "column": [" · ".join(prefix + [str(v) for v in values])
                       for values in table[columns].itertuples(index=False)],
            "cell": [ci_text(m, lo, hi, digits=digits) for m, lo, hi in
                     zip(table[metric], table[f"{metric}_low"], table[f"{metric}_high"])]}))
    cells = pd.concat(frames, ignore_index=True)
    wide = cells.pivot_table(index=index, columns="column", values="cell", aggfunc="first")
    rows = [r for r in (order or dict.fromkeys(cells[index])) if r in wide.index]
    wide = wide.reindex(index=rows, columns=list(dict.fromkeys(cells["column"]))).fillna("")
    wide.columns.name = None
    return wide


def metric_ci(table: pd.DataFrame, metrics: list[str], *, hue: str, x: str = "model",
              order: list[str] | None = None) -> plt.Figure:
    """A panel per metric: a dot per ``x`` value and ``hue`` group at ``table[metric]`` with an
    error bar from ``metric_low`` to ``metric_high`` (e.g. a bootstrap interval over sections).
    One row per (``x``, ``hue``) expected; undefined means (NaN) are not drawn, undefined
    bounds give a dot alone."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    order = [v for v in (order or dict.fromkeys(table[x])) if v in set(table[x])]
    groups = list(dict.fromkeys(table[hue]))
    colours = dict(zip(groups, sns.color_palette("tab10", max(len(groups), 1))))
    step = 0.7 / max(len(groups), 1)
    fig, axes = plt.subplots(1, len(metrics), squeeze=False,
                             figsize=(len(metrics) * (0.45 * len(order) + 1.6) + 1.2, 3.0))
    for ax, metric in zip(axes[0], metrics):
        for k, group in enumerate(groups):
            data = table[(table[hue] == group) & table[x].isin(order)]
            pos = np.array([order.index(v) for v in data[x]]) + (k - (len(groups) - 1) / 2) * step
            mean = data[metric].to_numpy(float)
            bounds = [data.get(f"{metric}_{b}", pd.Series(np.nan, index=data.index)).to_numpy(float)
                      for b in ("low", "high")]
            err = np.nan_to_num(np.vstack([mean - bounds[0], bounds[1] - mean]), nan=0.0)
            ax.errorbar(pos, mean, yerr=np.clip(err, 0, None), fmt="o", ms=4, capsize=2, lw=1,
                        color=colours[group], label=str(group))
        if metric.startswith(("PCC", "R2")):
            ax.axhline(0, color="0.5", lw=0.8, ls="--")
        ax.set_xticks(range(len(order)), order, rotation=45, ha="right")
        ax.set_xlim(-0.6, len(order) - 0.4)
        ax.set_title(metric, fontsize=9)
    axes[0, -1].legend(title=hue, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                       fontsize=8)
    fig.tight_layout()
    return fig


def box_by(table: pd.DataFrame, y: str, *, x: str, hue: str | None = None,
           order: list[str] | None = None) -> plt.Figure:
    """Box plots of ``table[y]`` per ``x`` value (``order``), split by ``hue``; NaN values are
    left out and counted in the title."""
    data = table.dropna(subset=[y])
    order = [v for v in (order or dict.fromkeys(table[x])) if v in set(data[x])]
    fig, ax = plt.subplots(figsize=(0.75 * max(len(order), 1) + 2.5, 3.0))
    sns.boxplot(data=data, x=x, y=y, hue=hue, order=order, ax=ax, fliersize=1.5, linewidth=0.8)
    ax.axhline(0, color="0.5", lw=0.8, ls="--")
    ax.tick_params(axis="x", rotation=45)
    ax.set_title(f"{len(data)} values ({len(table) - len(data)} undefined, not shown)", fontsize=9)
    if hue is not None and ax.get_legend():
        sns.move_legend(ax, "center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
