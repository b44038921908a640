"""Legacy ST readers (her2st, mouse olfactory bulb) on the real releases in the mirror.

Expected values are recomputed here from the raw files with plain pandas/PIL, independently of
the readers.
"""

from __future__ import annotations

import gzip
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from stcore.data import legacy_st, load
from stcore.errors import DataError

OBS_KEYS = {"slide_id", "patient", "split", "array_row", "array_col", "in_tissue", "has_image"}


def n_rows(path) -> int:
    """Spots in a raw count table (lines minus the header)."""
    with gzip.open(path, "rt") as fh:
        return sum(1 for _ in fh) - 1


def dense(adata):
    return np.asarray(adata.X.todense())


def check_spatial_entry(entry, *, with_image: bool):
    assert entry["scalefactors"]["spot_diameter_fullres"] > 0
    if not with_image:
        assert entry["images"] == {} and entry["metadata"]["image"] is None
        return
    meta, sf = entry["metadata"], entry["scalefactors"]
    assert set(entry["images"]) == {"hires", "lowres"}
    for res, side in (("hires", 2000), ("lowres", 600)):
        img = entry["images"][res]
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert max(img.shape[:2]) == side
        scale = sf[f"tissue_{res}_scalef"]
        assert img.shape[0] == pytest.approx(meta["fullres_height"] * scale, abs=1)
        assert img.shape[1] == pytest.approx(meta["fullres_width"] * scale, abs=1)


# ------------------------------------------------------------------------------------------ her2st


def test_her2st_keys(her2st):
    assert OBS_KEYS | {"label"} <= set(her2st.obs)
    assert her2st.obsm["spatial"].shape == (her2st.n_obs, 2)
    assert her2st.obsm["spatial"].dtype == np.float64
    assert list(her2st.uns["spatial"]) == ["B4", "C2"]
    for slide in ("B4", "C2"):
        check_spatial_entry(her2st.uns["spatial"][slide], with_image=True)
    assert her2st.uns["stcore"]["dataset"] == "her2st"
    assert her2st.uns["stcore"]["sections"] == ["B4", "C2"]
    assert list(her2st.uns["stcore"]["sections_without_image"]) == []
    assert np.array_equal(dense(her2st), np.asarray(her2st.layers["counts"].todense()))


def test_her2st_obs_values(her2st):
    obs = her2st.obs
    assert list(obs["slide_id"].cat.categories) == ["B4", "C2"]
    assert (obs["slide_id"] == "B4").sum() == 283 and (obs["slide_id"] == "C2").sum() == 187
    assert list(obs.groupby("slide_id", observed=True)["patient"].first()) == ["B", "C"]
    assert set(obs["split"]) == {"train"}
    assert (obs["in_tissue"] == 1).all() and obs["has_image"].all()
    assert all(re.fullmatch(r"(B4|C2)_\d+x\d+", n) for n in her2st.obs_names)


def test_her2st_matches_raw_files(her2st, mirror):
    """Counts, array and pixel coordinates of B4 equal those in the release's files."""
    b4 = her2st[her2st.obs["slide_id"] == "B4"]
    spots = [n.removeprefix("B4_") for n in b4.obs_names]
    raw = pd.read_csv(mirror / "her2st/ST-cnts/B4.tsv.gz", sep="\t", index_col=0)
    assert sorted(spots) == sorted(raw.index)
    np.testing.assert_array_equal(dense(b4), raw.loc[spots, b4.var_names].to_numpy())
    table = pd.read_csv(mirror / "her2st/ST-spotfiles/B4_selection.tsv", sep="\t")
    table.index = table["x"].astype(str) + "x" + table["y"].astype(str)
    table = table.loc[spots]
    np.testing.assert_allclose(b4.obsm["spatial"], table[["pixel_x", "pixel_y"]].to_numpy())
    np.testing.assert_array_equal(b4.obs["array_col"], table["x"])
    np.testing.assert_array_equal(b4.obs["array_row"], table["y"])


def test_her2st_spots_inside_image_and_spot_diameter(her2st):
    for slide in ("B4", "C2"):
        mask = (her2st.obs["slide_id"] == slide).to_numpy()
        xy = her2st.obsm["spatial"][mask]
        entry = her2st.uns["spatial"][slide]
        h, w = entry["metadata"]["fullres_height"], entry["metadata"]["fullres_width"]
        assert (xy >= 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] < h).all()
        # 100 µm spots at 200 µm pitch: the diameter is half the pixels per array step
        obs = her2st.obs[mask]
        pitch_x = np.polyfit(obs["array_col"], xy[:, 0], 1)[0]
        pitch_y = np.polyfit(obs["array_row"], xy[:, 1], 1)[0]
        assert pitch_x == pytest.approx(pitch_y, rel=0.03)
        diameter = entry["scalefactors"]["spot_diameter_fullres"]
        assert diameter == pytest.approx((pitch_x + pitch_y) / 4, rel=0.03)
        # and spots do not overlap: nearest neighbours are more than a diameter apart
        assert cKDTree(xy).query(xy, k=2)[0][:, 1].min() > diameter


def test_her2st_sections_without_image_and_labels(her2st_mixed, mirror):
    adata = her2st_mixed
    obs = adata.obs
    has_image = obs.groupby("slide_id", observed=True)["has_image"].first().to_dict()
    assert has_image == {"A1": False, "B4": True, "E3": False, "G2": False}
    assert list(adata.uns["stcore"]["sections_without_image"]) == ["A1", "E3", "G2"]
    for slide, image in has_image.items():
        check_spatial_entry(adata.uns["spatial"][slide], with_image=image)
    # A1: 346 spots with counts (2 more in the spot file have none and are dropped)
    assert (obs["slide_id"] == "A1").sum() == n_rows(mirror / "her2st/ST-cnts/A1.tsv.gz") == 346
    labelled = obs.groupby("slide_id", observed=True)["label"].count().to_dict()
    assert labelled["B4"] == 0 and labelled["E3"] == 0
    assert labelled["A1"] > 0.9 * 346 and labelled["G2"] > 0.9 * (obs["slide_id"] == "G2").sum()
    # labels equal those of the pathologist file (joined on rounded array coordinates)
    table = pd.read_csv(mirror / "her2st/ST-pat/lbl/A1_labeled_coordinates.tsv", sep="\t")
    truth = dict(zip(table["x"].round().astype(int).astype(str) + "x"
                     + table["y"].round().astype(int).astype(str), table["label"]))
    a1 = obs[obs["slide_id"] == "A1"]
    for spot, label in zip(a1["spot"], a1["label"]):
        assert label == truth[spot] if spot in truth else pd.isna(label)
    assert "invasive cancer" in set(a1["label"].dropna())


def test_her2st_split_by_patient(her2st_mixed):
    split = her2st_mixed.obs.groupby("slide_id", observed=True)["split"].first().to_dict()
    assert split == {"A1": "train", "B4": "train", "E3": "val", "G2": "test"}
    patient = her2st_mixed.obs.groupby("slide_id", observed=True)["patient"].first().to_dict()
    assert patient == {"A1": "A", "B4": "B", "E3": "E", "G2": "G"}


def test_her2st_strict_rejects_spots_without_counts(mirror, isolated_cache):
    with pytest.raises(DataError, match=r"A1_selection\.tsv: 2 spots have a position but no counts "
                                        r"in A1\.tsv\.gz, e\.g\. \['17x14', '18x20'\]"):
        legacy_st.read_her2st_section("A1", strict=True)


def test_her2st_spots_missing_from_spot_file(tmp_mirror, her2st_files):
    """Counts for a spot the spot file does not place: an error naming the spot file."""
    tmp_mirror.copy(*her2st_files("A2"))
    path = "her2st/ST-spotfiles/A2_selection.tsv"
    lines = tmp_mirror.read(path).decode().splitlines(keepends=True)
    removed = lines[1].split("\t")[:2]
    written = tmp_mirror.put(path, "".join(lines[:1] + lines[2:]).encode())
    with pytest.raises(DataError, match=rf"^{re.escape(str(written))}: 1 spots of A2\.tsv\.gz have no "
                                        rf"position here, e\.g\. \['{removed[0]}x{removed[1]}'\]"):
        legacy_st.read_her2st_section("A2")


def test_her2st_spot_outside_image(tmp_mirror):
    """A pixel centre beyond the H&E: an error naming the spot file (checked against the real image)."""
    files = ["her2st/ST-cnts/C3.tsv.gz", "her2st/ST-imgs/C/C3/5714_HE_BT_D1.jpg"]
    tmp_mirror.copy(*files)
    path = "her2st/ST-spotfiles/C3_selection.tsv"
    table = pd.read_csv(tmp_mirror.source / path, sep="\t")
    table.loc[5, "pixel_x"] = 20000.0
    spot = f"{table.loc[5, 'x']}x{table.loc[5, 'y']}"
    written = tmp_mirror.put(path, table.to_csv(sep="\t", index=False).encode())
    with pytest.raises(DataError, match=rf"^{re.escape(str(written))}: 1 spot centres lie outside the "
                                        rf"\d+×\d+ px image, e\.g\. spot '{spot}' at \(20000\.0, "):
        legacy_st.read_her2st_section("C3")


# --------------------------------------------------------------------------------------------- MOB


def test_mob_sections_spots_animals(mob, mirror):
    obs = mob.obs
    assert mob.n_obs == 1091
    assert list(obs["slide_id"].cat.categories) == ["Rep1", "Rep2", "Rep11", "Rep12"]
    per_section = obs["slide_id"].value_counts().to_dict()
    for s in legacy_st.MOB_SECTIONS:
        assert per_section[s] == n_rows(mirror / f"mob/counts/{s}.tsv.gz")
    animals = obs.groupby("slide_id", observed=True)["patient"].first().to_dict()
    assert animals == {"Rep1": "A", "Rep2": "A", "Rep11": "E", "Rep12": "E"}
    split = obs.groupby("slide_id", observed=True)["split"].first().to_dict()
    assert split == {"Rep1": "train", "Rep2": "train", "Rep11": "test", "Rep12": "test"}
    meta = pd.read_csv(mirror / "mob/splotch_metadata.tsv", sep="\t").set_index("sample_number")
    assert [meta.loc[n, "level_1"] for n in (1, 2, 11, 12)] == ["A", "A", "E", "E"]


def test_mob_keys(mob):
    assert OBS_KEYS | {"layer"} <= set(mob.obs)
    assert mob.obsm["spatial"].shape == (1091, 2)
    assert list(mob.uns["spatial"]) == ["Rep1", "Rep2", "Rep11", "Rep12"]
    for entry in mob.uns["spatial"].values():
        check_spatial_entry(entry, with_image=True)
        # README: a spot is ~37 px across in the ~2,320 px wide images
        assert 33 < entry["scalefactors"]["spot_diameter_fullres"] < 41
    x = dense(mob)
    assert (x >= 0).all() and np.array_equal(x, np.round(x)) and x.sum(axis=1).min() > 0


def test_mob_layer_labels(mob, mirror):
    layers = mob.obs["layer"]
    assert set(layers.cat.categories) == set(legacy_st.MOB_LAYERS)
    assert layers.notna().mean() > 0.99
    assert all(layers[mob.obs["slide_id"] == s].nunique() == 5 for s in legacy_st.MOB_SECTIONS)
    # Rep1's labels equal the one-hot annotation of replicate 01 at the rounded array coordinates
    onehot = pd.read_csv(mirror / "mob/annotations/01.tsv", sep="\t", index_col=0)
    rep1 = mob.obs[mob.obs["slide_id"] == "Rep1"]
    checked = 0
    for spot, label in zip(rep1["spot"], rep1["layer"]):
        x, y = (round(float(v)) for v in spot.split("x"))
        column = onehot.get(f"{x}_{y}")
        if column is not None and column.sum() > 0:
            assert label == column.idxmax()
            checked += 1
    assert checked > 0.95 * len(rep1)


def test_mob_pixel_coordinates_follow_readme(mob, mirror):
    """``px = (x - 1) * 194 * W / 6200`` with the decimal array coordinates of the spot names."""
    for section, number in (("Rep1", 1), ("Rep12", 12)):
        sub = mob[mob.obs["slide_id"] == section]
        w, h = Image.open(mirror / f"mob/images/{number:02d}.jpg").size
        xy = np.array([[float(v) for v in s.split("x")] for s in sub.obs["spot"]])
        np.testing.assert_allclose(sub.obsm["spatial"], (xy - 1) * 194 * w / 6200)
        assert (sub.obsm["spatial"] > 0).all()
        assert (sub.obsm["spatial"][:, 0] < w).all() and (sub.obsm["spatial"][:, 1] < h).all()


def test_mob_counts_match_raw_file(mob, mirror):
    raw = pd.read_csv(mirror / "mob/counts/Rep11.tsv.gz", sep="\t", index_col=0)
    sub = mob[mob.obs["slide_id"] == "Rep11"]
    np.testing.assert_array_equal(dense(sub), raw.loc[list(sub.obs["spot"]), sub.var_names].to_numpy())


# ---------------------------------------------------------------------------------------- all her2st


@pytest.mark.slow
def test_her2st_all_sections(mirror):
    adata = load("her2st")
    obs = adata.obs
    assert adata.n_obs == 13620
    assert obs["slide_id"].nunique() == 36
    per_patient = obs.groupby("patient", observed=True)["slide_id"].nunique().to_dict()
    assert per_patient == {**{p: 6 for p in "ABCD"}, **{p: 3 for p in "EFGH"}}
    split = obs.groupby("patient", observed=True)["split"].first().to_dict()
    assert split == {**{p: "train" for p in "ABCD"}, **{p: "val" for p in "EF"},
                     **{p: "test" for p in "GH"}}
    with_image = sorted(obs.loc[obs["has_image"], "slide_id"].unique())
    assert with_image == ["B4", "C2", "C3", "C4", "C5", "C6"]
    assert len(adata.uns["stcore"]["sections_without_image"]) == 30
    assert set(adata.uns["spatial"]) == set(legacy_st.HER2ST_SECTIONS)
    labelled = sorted(obs.loc[obs["label"].notna(), "slide_id"].unique())
    assert labelled == ["A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1"]
    assert adata.uns["stcore"]["n_genes_union"] >= adata.n_vars > 10000
