"""Per-section summaries of a loaded dataset."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd


def section_table(adata: ad.AnnData, label_key: str | None = None) -> pd.DataFrame:
    """QC table, one row per section: patient, split, spots, genes detected, counts per spot, image.

    Counts are read from ``layers['counts']`` (``X`` if absent).
    """
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    rows = []
    for slide in adata.obs["slide_id"].cat.categories:
        mask = (adata.obs["slide_id"] == slide).to_numpy()
        sub = counts[mask]
        per_spot = np.asarray(sub.sum(axis=1)).ravel()
        obs = adata.obs.loc[mask]
        row = {"section": slide, "patient": obs["patient"].iloc[0], "split": obs["split"].iloc[0],
               "spots": int(mask.sum()), "genes detected": int((np.asarray(sub.sum(axis=0)) > 0).sum()),
               "median counts/spot": float(np.median(per_spot)),
               "mean counts/spot": float(per_spot.mean()), "H&E": bool(obs["has_image"].iloc[0])}
        if label_key and label_key in obs:
            row["labelled spots"] = int(obs[label_key].notna().sum())
        rows.append(row)
    return pd.DataFrame(rows).set_index("section")
