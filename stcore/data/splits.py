"""Evaluation protocols: which sections train, validate and test, fold by fold.

Three protocols (see ``shared/reference/predictors.md`` §2, §5):

``fixed``
    One fold from ``obs['split']`` (the registry's default split, e.g. SpaRED's patient split).
``section_out``
    Leave-one-section-out, the protocol of HisToGene, Hist2ST, THItoGene and mclSTExp: one fold per
    section. Serial sections of the test section's patient stay in training, so the test patient's
    tissue is seen during training (leakage; mclSTExp issue #5).
``patient_out``
    Leave-one-patient-out (TRIPLEX, DKAN, ST-Net): one fold per patient; no section of the test
    patient is in train or validation.

Sections are identified by ``obs['slide_id']``, patients by ``obs['patient']``; "obs order" is the
order in which sections first appear in ``obs``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

log = logging.getLogger("stcore")

PROTOCOLS = ("fixed", "section_out", "patient_out")
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Fold:
    """One train/val/test assignment of sections (``obs['slide_id']`` values)."""

    name: str
    protocol: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def to_dict(self) -> dict:
        """Plain dict (lists of section ids) for JSON provenance."""
        return {"name": self.name, "protocol": self.protocol, "train": list(self.train),
                "val": list(self.val), "test": list(self.test)}

    def rows(self, adata: ad.AnnData, part: str) -> np.ndarray:
        """Boolean mask over ``adata.obs`` of the spots in the sections of ``part`` (train/val/test)."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {', '.join(PARTS)}; got {part!r}")
        return adata.obs["slide_id"].astype(str).isin(getattr(self, part)).to_numpy()

    @property
    def sections(self) -> tuple[str, ...]:
        """All sections of the fold: train, then val, then test."""
        return self.train + self.val + self.test


def folds(adata: ad.AnnData, protocol: str, *, image_only: bool = True) -> list[Fold]:
    """The folds of an evaluation protocol over the sections of ``adata``.

    Parameters
    ----------
    adata
        AnnData with ``obs['slide_id']``, ``obs['patient']`` (``patient_out``), ``obs['split']``
        (``fixed``) and ``obs['has_image']`` (``image_only``), as made by :func:`stcore.data.load`.
    protocol
        ``"fixed"``: one fold from ``obs['split']``; when no section is in ``val``, the last
        ``train`` section (obs order) becomes the validation section if there are at least two
        (logged), else validation stays empty (logged).
        ``"section_out"``: one fold per section as test; validation is the next section in obs order
        (wrapping around to the first), training all others. Serial sections of the test patient
        stay in training (the leakage of the Hist2ST family's protocol).
        ``"patient_out"``: one fold per patient as test; of the other patients' sections (obs order),
        the last one is validation and the rest train, so the test patient is never in train or
        validation. Needs 2 patients.
        In both, when a single section is left outside the test it trains and validation is empty
        (logged): e.g. her2st's image sections B4, C2–C6, where testing on patient C leaves B4.
    image_only
        Drop sections without an H&E image (``obs['has_image']`` False), logging which: image tasks
        have no patches for them. Set False for expression-only tasks.

    Returns
    -------
    List of :class:`Fold`; for ``section_out`` and ``patient_out`` every section is tested exactly
    once, in obs order of the test section / first section of the test patient.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    obs = adata.obs
    if "slide_id" not in obs:
        raise ValueError("adata.obs has no 'slide_id' column (section ids)")
    order = [str(s) for s in dict.fromkeys(obs["slide_id"].astype(str))]
    if image_only:
        if "has_image" not in obs:
            raise ValueError("adata.obs has no 'has_image' column; pass image_only=False for "
                             "expression-only tasks")
        with_image = obs.groupby(obs["slide_id"].astype(str), observed=True)["has_image"].all()
        dropped = [s for s in order if not bool(with_image[s])]
        if dropped:
            log.warning("folds (%s): %d sections dropped, no H&E image (image tasks need patches): %s",
                        protocol, len(dropped), ", ".join(dropped))
        order = [s for s in order if s not in dropped]
    if len(order) < 2:
        raise ValueError(f"protocol {protocol!r} needs at least 2 sections, got {len(order)}"
                         + (" with an H&E image (image_only=True)" if image_only else "")
                         + (f": {order[0]}" if order else ""))
    if protocol == "fixed":
        return [_fixed(obs, order)]
    if protocol == "section_out":
        return _section_out(order)
    return _patient_out(obs, order)


def split_table(folds: list[Fold]) -> pd.DataFrame:
    """One row per fold: name, protocol and the sections of each part, comma-joined (provenance)."""
    return pd.DataFrame([{"name": f.name, "protocol": f.protocol, "train": ", ".join(f.train),
                          "val": ", ".join(f.val), "test": ", ".join(f.test)} for f in folds],
                        columns=["name", "protocol", "train", "val", "test"])


# ------------------------------------------------------------------------------------ protocols


def _per_section(obs: pd.DataFrame, column: str, order: list[str]) -> dict[str, str]:
    """``{section: value}`` of a column that must be constant within each section."""
    if column not in obs:
        raise ValueError(f"adata.obs has no {column!r} column")
    values = obs.groupby(obs["slide_id"].astype(str), observed=True)[column].agg(
        lambda v: sorted(set(map(str, v))))
    mixed = {s: values[s] for s in order if len(values[s]) != 1}
    if mixed:
        raise ValueError(f"obs[{column!r}] is not constant within sections: {mixed}")
    return {s: values[s][0] for s in order}


def _fixed(obs: pd.DataFrame, order: list[str]) -> Fold:
    split = _per_section(obs, "split", order)
    parts = {p: [s for s in order if split[s] == p] for p in PARTS}
    other = [s for s in order if split[s] not in PARTS]
    if other:
        log.warning("folds (fixed): %d sections in no train/val/test split, left out: %s",
                    len(other), ", ".join(f"{s} ({split[s]})" for s in other))
    for part in ("train", "test"):
        if not parts[part]:
            raise ValueError(f"protocol 'fixed': no section in split {part!r} (sections: "
                             + ", ".join(f"{s}={split[s]}" for s in order) + ")")
    if not parts["val"]:
        if len(parts["train"]) >= 2:
            parts["val"] = [parts["train"].pop()]
            log.info("folds (fixed): no validation section in obs['split']; using the last train "
                     "section %s", parts["val"][0])
        else:
            log.warning("folds (fixed): no validation section and only one train section (%s); "
                        "validation is empty", parts["train"][0])
    return Fold("fixed", "fixed", *(tuple(parts[p]) for p in PARTS))


def _section_out(order: list[str]) -> list[Fold]:
    out = []
    for i, test in enumerate(order):
        rest = order[i + 1:] + order[:i]  # the next sections in obs order, wrapping around
        train, val = _train_val(rest[1:] + rest[:1], f"section_out, test section {test}")
        out.append(Fold(f"section-{test}", "section_out", tuple(s for s in order if s in train),
                        val, (test,)))
    return out


def _train_val(rest: list[str], what: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The last of ``rest`` validates, the others train; a single section trains, val empty."""
    if len(rest) == 1:
        log.warning("folds (%s): only one section (%s) outside the test; it trains and validation "
                    "is empty", what, rest[0])
        return tuple(rest), ()
    return tuple(rest[:-1]), (rest[-1],)


def _patient_out(obs: pd.DataFrame, order: list[str]) -> list[Fold]:
    patient = _per_section(obs, "patient", order)
    patients = list(dict.fromkeys(patient[s] for s in order))
    if len(patients) < 2:
        raise ValueError(f"protocol 'patient_out' needs at least 2 patients, got {len(patients)} "
                         f"({', '.join(patients)}) over sections {', '.join(order)}")
    out = []
    for p in patients:
        test = tuple(s for s in order if patient[s] == p)
        rest = [s for s in order if patient[s] != p]
        train, val = _train_val(rest, f"patient_out, test patient {p}")
        out.append(Fold(f"patient-{p}", "patient_out", train, val, test))
    return out
