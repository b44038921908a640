"""10x Visium reader on the mirror's Space Ranger 1.0.0 sample and a 2.x-layout copy of it."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from stcore.data.visium import read_visium
from stcore.errors import DataError

HEADER = "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n"
COLUMNS = HEADER.strip().split(",")


@pytest.fixture(scope="module")
def sample(mirror):
    return mirror / "visium_format_sample"


@pytest.fixture(scope="module")
def v1(sample):
    return read_visium(sample, library_id="lib")


@pytest.fixture
def copy(sample, tmp_path):
    """A writable copy of the sample (a Space Ranger 1.x folder)."""
    target = tmp_path / "sample"
    shutil.copytree(sample, target)
    for p in [target, *target.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return target


def positions(folder) -> pd.DataFrame:
    return pd.read_csv(folder / "spatial/tissue_positions_list.csv", header=None, names=COLUMNS,
                       index_col=0)


def barcodes(folder) -> list[str]:
    return list(sc.read_10x_h5(folder / "filtered_feature_bc_matrix.h5").obs_names)


def test_space_ranger_1_layout(v1, sample):
    assert v1.n_obs == 100 and v1.n_vars == 100
    assert {"slide_id", "patient", "array_row", "array_col", "in_tissue", "has_image"} <= set(v1.obs)
    assert (v1.obs["slide_id"] == "lib").all() and v1.obs["has_image"].all()
    assert "gene_ids" in v1.var and v1.var["gene_ids"].str.startswith("ENSG").all()
    # obs names are '<library_id>_<barcode>', in the order of the count matrix
    assert list(v1.obs_names) == [f"lib_{b}" for b in barcodes(sample)]
    # obsm['spatial'] is (x, y) = (pxl_col_in_fullres, pxl_row_in_fullres) of the positions file
    table = positions(sample).loc[barcodes(sample)]
    assert v1.obsm["spatial"].dtype == np.float64
    np.testing.assert_array_equal(v1.obsm["spatial"],
                                  table[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float))
    for column in ("array_row", "array_col", "in_tissue"):
        np.testing.assert_array_equal(v1.obs[column].to_numpy(), table[column].to_numpy())
        assert v1.obs[column].dtype.kind == "i"
    entry = v1.uns["spatial"]["lib"]
    assert set(entry["images"]) == {"hires", "lowres"}
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(89.42751063343188)
    x = np.asarray(v1.X.todense())
    assert (x >= 0).all() and np.array_equal(x, np.round(x))


def test_library_id_defaults_to_folder_name(copy):
    assert (read_visium(copy).obs["slide_id"] == "sample").all()


def test_space_ranger_2_layout_gives_same_coordinates(v1, copy):
    """2.x: ``tissue_positions.csv`` with a header line; same obsm['spatial'] as 1.x."""
    old = copy / "spatial/tissue_positions_list.csv"
    (copy / "spatial/tissue_positions.csv").write_text(HEADER + old.read_text())
    old.unlink()
    v2 = read_visium(copy, library_id="lib")
    assert list(v2.obs_names) == list(v1.obs_names)
    np.testing.assert_array_equal(v2.obsm["spatial"], v1.obsm["spatial"])
    pd.testing.assert_frame_equal(v2.obs[["array_row", "array_col", "in_tissue"]],
                                  v1.obs[["array_row", "array_col", "in_tissue"]])
    np.testing.assert_array_equal(v2.X.todense(), v1.X.todense())


def test_space_ranger_2_file_is_preferred(v1, copy):
    """With both files present, the 2.x one is read (here: with every spot shifted by 10 px)."""
    table = positions(copy)
    table[["pxl_row_in_fullres", "pxl_col_in_fullres"]] += 10
    table.reset_index().to_csv(copy / "spatial/tissue_positions.csv", index=False)
    v2 = read_visium(copy, library_id="lib")
    np.testing.assert_array_equal(v2.obsm["spatial"], v1.obsm["spatial"] + 10)


def test_barcode_without_position(copy):
    path = copy / "spatial/tissue_positions_list.csv"
    missing = barcodes(copy)[7]
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if not line.startswith(missing + ",")))
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: 1 barcodes of "
                                        rf"filtered_feature_bc_matrix\.h5 have no position, "
                                        rf"e\.g\. \['{missing}'\]"):
        read_visium(copy)


def test_spot_outside_the_image(copy):
    path = copy / "spatial/tissue_positions_list.csv"
    table = positions(copy)
    moved = barcodes(copy)[3]
    table.loc[moved, "pxl_col_in_fullres"] = 10**6
    table.reset_index().to_csv(path, header=False, index=False)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: 1 spot centres lie outside the "
                                        rf"\d+×\d+ px image, e\.g\. spot '{moved}' at \(1000000\.0, "):
        read_visium(copy)


@pytest.mark.parametrize("remove, what", [
    ("filtered_feature_bc_matrix.h5", "count matrix"),
    ("spatial/tissue_positions_list.csv", "tissue positions file"),
    ("spatial/scalefactors_json.json", "scale factors"),
])
def test_missing_file(copy, remove, what):
    (copy / remove).unlink()
    with pytest.raises(DataError, match=rf"missing {what} of the Space Ranger output"):
        read_visium(copy)


def test_corrupt_count_matrix(copy):
    (copy / "filtered_feature_bc_matrix.h5").write_bytes(b"not an hdf5 file")
    with pytest.raises(DataError, match=rf"^{re.escape(str(copy))}: unreadable Space Ranger output"):
        read_visium(copy)


def test_visium_format_sample_loads(visium, sample):
    assert visium.n_obs == 100
    assert (visium.obs["slide_id"] == "visium_format_sample").all()
    assert set(visium.obs["split"]) == {"train"}
    assert visium.uns["stcore"]["dataset"] == "visium_format_sample"
    assert list(visium.uns["spatial"]) == ["visium_format_sample"]
    table = positions(sample).loc[barcodes(sample)]
    np.testing.assert_array_equal(visium.obsm["spatial"],
                                  table[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float))
