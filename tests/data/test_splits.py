"""stcore.data.splits: fixed, leave-one-section-out and leave-one-patient-out folds."""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stcore.data.splits import PROTOCOLS, Fold, folds, split_table

# section: (patient, split, has_image, n spots)
SECTIONS = {
    "A1": ("A", "train", False, 3), "A2": ("A", "train", True, 4), "A3": ("A", "train", True, 2),
    "B1": ("B", "train", True, 5), "B2": ("B", "train", True, 3),
    "C1": ("C", "val", True, 2),
    "D1": ("D", "test", True, 4), "D2": ("D", "test", False, 1),
}


def synthetic(sections: dict = SECTIONS, *, shuffle: bool = False) -> ad.AnnData:
    """Spots of the given sections (obs order = dict order; shuffled spots keep first appearances)."""
    rows = [(f"{s}_{i}", s, p, split, img)
            for s, (p, split, img, n) in sections.items() for i in range(n)]
    obs = pd.DataFrame(rows, columns=["name", "slide_id", "patient", "split", "has_image"]).set_index("name")
    if shuffle:  # interleave later spots but keep the first spot of every section in place
        firsts = obs.groupby("slide_id", sort=False).head(1)
        rest = obs.drop(firsts.index).sample(frac=1, random_state=0)
        obs = pd.concat([firsts, rest])
    for column in ("slide_id", "patient", "split"):
        obs[column] = pd.Categorical(obs[column], categories=list(dict.fromkeys(obs[column])))
    return ad.AnnData(X=np.zeros((len(obs), 2), np.float32), obs=obs)


def _assert_disjoint(fold: Fold):
    parts = [set(fold.train), set(fold.val), set(fold.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2]), fold
    assert fold.train and fold.test


# ------------------------------------------------------------------------------------------- fixed


def test_fixed_uses_obs_split_and_drops_sections_without_image(caplog):
    adata = synthetic()
    with caplog.at_level(logging.INFO, logger="stcore"):
        (fold,) = folds(adata, "fixed")
    assert fold == Fold("fixed", "fixed", ("A2", "A3", "B1", "B2"), ("C1",), ("D1",))
    assert "2 sections dropped, no H&E image (image tasks need patches): A1, D2" in caplog.text
    (all_sections,) = folds(adata, "fixed", image_only=False)
    assert all_sections.train == ("A1", "A2", "A3", "B1", "B2") and all_sections.test == ("D1", "D2")


def test_fixed_without_val_carves_the_last_train_section(caplog):
    adata = synthetic({k: v for k, v in SECTIONS.items() if k != "C1"}, shuffle=True)
    with caplog.at_level(logging.INFO, logger="stcore"):
        (fold,) = folds(adata, "fixed")
    assert fold.train == ("A2", "A3", "B1") and fold.val == ("B2",) and fold.test == ("D1",)
    assert "no validation section in obs['split']; using the last train section B2" in caplog.text


def test_fixed_with_one_train_section_has_empty_val(caplog):
    adata = synthetic({"A2": ("A", "train", True, 2), "D1": ("D", "test", True, 2)})
    with caplog.at_level(logging.WARNING, logger="stcore"):
        (fold,) = folds(adata, "fixed")
    assert fold.val == () and "validation is empty" in caplog.text


def test_fixed_without_test_section_is_an_error():
    adata = synthetic({"A2": ("A", "train", True, 2), "C1": ("C", "val", True, 2)})
    with pytest.raises(ValueError, match=r"protocol 'fixed': no section in split 'test' \(sections: "
                                         r"A2=train, C1=val\)"):
        folds(adata, "fixed")


# ------------------------------------------------------------------------------------- section_out


def test_section_out_tests_every_section_once():
    adata = synthetic(shuffle=True)
    out = folds(adata, "section_out")
    tested = [s for f in out for s in f.test]
    assert tested == ["A2", "A3", "B1", "B2", "C1", "D1"]  # obs order, image sections only
    for f in out:
        _assert_disjoint(f)
        assert len(f.val) == 1 and set(f.sections) == set(tested)
        assert f.protocol == "section_out" and f.name == f"section-{f.test[0]}"
    # validation: the next section in obs order, wrapping around
    assert [f.val[0] for f in out] == ["A3", "B1", "B2", "C1", "D1", "A2"]
    # serial sections of the test patient stay in training (the protocol's leakage)
    assert "A2" in out[1].train


def test_section_out_with_two_sections_has_empty_val(caplog):
    adata = synthetic({"A2": ("A", "train", True, 2), "B1": ("B", "test", True, 2)})
    with caplog.at_level(logging.WARNING, logger="stcore"):
        a, b = folds(adata, "section_out")
    assert a == Fold("section-A2", "section_out", ("B1",), (), ("A2",))
    assert b == Fold("section-B1", "section_out", ("A2",), (), ("B1",))
    assert ("folds (section_out, test section A2): only one section (B1) outside the test; it trains "
            "and validation is empty") in caplog.text


# ------------------------------------------------------------------------------------- patient_out


def test_patient_out_never_has_the_test_patient_in_train_or_val():
    adata = synthetic(shuffle=True)
    out = folds(adata, "patient_out", image_only=False)
    patient = {s: p for s, (p, *_rest) in SECTIONS.items()}
    assert [f.name for f in out] == ["patient-A", "patient-B", "patient-C", "patient-D"]
    tested = [s for f in out for s in f.test]
    assert sorted(tested) == sorted(SECTIONS) and len(tested) == len(set(tested))
    for f in out:
        _assert_disjoint(f)
        (p,) = {patient[s] for s in f.test}
        assert all(patient[s] != p for s in f.train + f.val)
        assert set(f.test) == {s for s in SECTIONS if patient[s] == p}
        assert len(f.val) == 1 and set(f.sections) == set(SECTIONS)
    # validation: the last of the other patients' sections (obs order)
    assert [f.val[0] for f in out] == ["D2", "D2", "D2", "C1"]


def test_patient_out_with_two_patients_trains_and_validates_on_the_other():
    adata = synthetic({"B1": ("B", "train", True, 2), "B2": ("B", "train", True, 2),
                       "C1": ("C", "train", True, 2), "C2": ("C", "train", True, 2),
                       "C3": ("C", "train", True, 2)})
    b, c = folds(adata, "patient_out")
    assert b == Fold("patient-B", "patient_out", ("C1", "C2"), ("C3",), ("B1", "B2"))
    assert c == Fold("patient-C", "patient_out", ("B1",), ("B2",), ("C1", "C2", "C3"))


def test_patient_out_with_one_other_section_trains_on_it_without_val(caplog):
    adata = synthetic({"A2": ("A", "train", True, 2), "A3": ("A", "train", True, 2),
                       "B1": ("B", "test", True, 2)})
    with caplog.at_level(logging.WARNING, logger="stcore"):
        a, b = folds(adata, "patient_out")
    assert a == Fold("patient-A", "patient_out", ("B1",), (), ("A2", "A3"))
    assert b == Fold("patient-B", "patient_out", ("A2",), ("A3",), ("B1",))
    assert "folds (patient_out, test patient A): only one section (B1) outside the test" in caplog.text


def test_patient_out_errors():
    one_patient = synthetic({"A2": ("A", "train", True, 2), "A3": ("A", "test", True, 2)})
    with pytest.raises(ValueError, match=r"'patient_out' needs at least 2 patients, got 1 \(A\)"):
        folds(one_patient, "patient_out")
    mixed = synthetic({"A2": ("A", "train", True, 2), "B1": ("B", "test", True, 2)})
    mixed.obs["patient"] = ["A", "B", "B", "B"]
    with pytest.raises(ValueError, match=r"obs\['patient'\] is not constant within sections: "
                                         r"\{'A2': \['A', 'B'\]\}"):
        folds(mixed, "patient_out")


# ---------------------------------------------------------------------------------- common errors


def test_unknown_protocol_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown protocol 'loso'; known: fixed, section_out, patient_out"):
        folds(synthetic(), "loso")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fewer_than_two_image_sections_is_an_error(protocol, caplog):
    adata = synthetic({"A1": ("A", "train", False, 2), "B1": ("B", "test", True, 2)})
    with pytest.raises(ValueError, match=rf"protocol '{protocol}' needs at least 2 sections, got 1 "
                                         r"with an H&E image \(image_only=True\): B1"):
        folds(adata, protocol)
    assert "1 sections dropped, no H&E image" in caplog.text


def test_missing_columns():
    adata = synthetic()
    del adata.obs["has_image"]
    with pytest.raises(ValueError, match="no 'has_image' column; pass image_only=False"):
        folds(adata, "section_out")
    assert len(folds(adata, "section_out", image_only=False)) == len(SECTIONS)


# ------------------------------------------------------------------------------- rows, provenance


def test_rows_select_the_spots_of_each_part():
    adata = synthetic(shuffle=True)
    fold = folds(adata, "patient_out")[0]
    for part in ("train", "val", "test"):
        mask = fold.rows(adata, part)
        assert mask.dtype == bool and mask.shape == (adata.n_obs,)
        assert set(adata.obs.loc[mask, "slide_id"]) == set(getattr(fold, part))
    assert not (fold.rows(adata, "train") & fold.rows(adata, "test")).any()
    with pytest.raises(ValueError, match="part must be one of train, val, test; got 'dev'"):
        fold.rows(adata, "dev")


def test_split_table_and_to_dict():
    out = folds(synthetic(), "patient_out")
    table = split_table(out)
    assert list(table.columns) == ["name", "protocol", "train", "val", "test"]
    assert len(table) == len(out) == 4
    assert table.iloc[0].to_dict() == {"name": "patient-A", "protocol": "patient_out",
                                       "train": "B1, B2, C1", "val": "D1", "test": "A2, A3"}
    assert json.loads(json.dumps(out[0].to_dict()))["test"] == ["A2", "A3"]


# ------------------------------------------------------------------------------------- real data


def test_her2st_image_sections(mirror):
    from stcore.data import load

    adata = load("her2st", sections=["B4", "C2", "C3", "C4", "C5", "C6"])
    loso = folds(adata, "section_out")
    assert [f.test for f in loso] == [(s,) for s in ["B4", "C2", "C3", "C4", "C5", "C6"]]
    lopo = folds(adata, "patient_out")
    assert [f.name for f in lopo] == ["patient-B", "patient-C"]
    b, c = lopo
    assert b.test == ("B4",) and b.train == ("C2", "C3", "C4", "C5") and b.val == ("C6",)
    assert c.test == ("C2", "C3", "C4", "C5", "C6") and c.train == ("B4",) and c.val == ()
    for f in loso + lopo:
        assert f.rows(adata, "test").sum() == adata.obs["slide_id"].isin(f.test).sum() > 0


def test_mob_patient_out(mob):
    lopo = folds(mob, "patient_out")
    patients = dict(zip(mob.obs["slide_id"].astype(str), mob.obs["patient"].astype(str)))
    assert len(lopo) == 2
    for f in lopo:
        (p,) = {patients[s] for s in f.test}
        assert all(patients[s] != p for s in f.train + f.val)
