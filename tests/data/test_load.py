"""stcore.data.load: registered datasets as one AnnData, cached by content; failures leave no cache."""

from __future__ import annotations

import importlib
import logging
import re

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest

from stcore.data import load, processed_dir, section_table, sections
from stcore.data.legacy_st import HER2ST_SECTIONS
from stcore.errors import DataError, UnknownDatasetError

load_module = importlib.import_module("stcore.data.load")  # the module; stcore.data.load is the function


def _raise(*args, **kwargs):
    raise AssertionError("the reader must not run: the dataset is cached")


# ---------------------------------------------------------------------------------- names, sections


def test_unknown_dataset_lists_registered_names():
    with pytest.raises(UnknownDatasetError,
                       match=r"unknown dataset 'her2'; registered: her2st, mob, visium_format_sample"):
        load("her2")


@pytest.mark.parametrize("chosen, shown", [(["A1", "Z9"], r"\['Z9'\]"), ([], r"\[\]")])
def test_unknown_or_no_sections(chosen, shown):
    with pytest.raises(DataError, match=rf"^her2st: unknown sections {shown}; known: A1, A2, .*, H3$"):
        load("her2st", sections=chosen)


def test_sections():
    assert sections("her2st") == HER2ST_SECTIONS and len(HER2ST_SECTIONS) == 36
    assert sections("mob") == ["Rep1", "Rep2", "Rep11", "Rep12"]
    assert sections("visium_format_sample") == ["visium_format_sample"]


# ------------------------------------------------------------------------------------------- cache


def test_load_is_cached_by_content(her2st, monkeypatch, session_cache):
    key = her2st.uns["stcore"]["key"]
    path = processed_dir("her2st", key) / "adata.h5ad"
    assert path.is_file() and path.is_relative_to(session_cache)
    monkeypatch.setitem(load_module.READERS, "her2st", (_raise, HER2ST_SECTIONS))
    again = load("her2st", sections=["B4", "C2"])
    assert again.uns["stcore"]["key"] == key
    assert list(again.obs_names) == list(her2st.obs_names)
    assert (again.X != her2st.X).nnz == 0
    np.testing.assert_array_equal(again.obsm["spatial"], her2st.obsm["spatial"])
    np.testing.assert_array_equal(again.uns["spatial"]["B4"]["images"]["hires"],
                                  her2st.uns["spatial"]["B4"]["images"]["hires"])
    assert again.obs["split"].dtype == "category" and again.obs["label"].dtype == "category"
    # another selection of sections is another cache entry: the reader runs (and here fails)
    with pytest.raises(AssertionError, match="must not run"):
        load("her2st", sections=["C2", "B4"])


def test_key_depends_on_strict(visium):
    strict = load("visium_format_sample", strict=True)
    assert strict.uns["stcore"]["key"] != visium.uns["stcore"]["key"]
    assert processed_dir("visium_format_sample", strict.uns["stcore"]["key"]).joinpath("adata.h5ad").exists()


def test_cache_false_writes_nothing(mirror, isolated_cache):
    adata = load("visium_format_sample", cache=False)
    assert adata.n_obs == 100
    assert not (isolated_cache / "processed").exists()


def test_counts_layer_and_metadata(mob):
    assert (mob.layers["counts"] != mob.X).nnz == 0
    info = mob.uns["stcore"]
    assert info["dataset"] == "mob" and info["sections"] == ["Rep1", "Rep2", "Rep11", "Rep12"]
    assert re.fullmatch(r"[0-9a-f]{16}", info["key"])
    assert info["n_genes_union"] >= mob.n_vars  # inner join of the sections' genes
    for column in ("slide_id", "patient", "split", "layer"):
        assert mob.obs[column].dtype == "category"


def test_section_without_image_is_usable_and_logged(mirror, isolated_cache, caplog):
    with caplog.at_level(logging.WARNING, logger="stcore"):
        adata = load("her2st", sections=["C1"])
    assert adata.n_obs == 176 and not adata.obs["has_image"].any()
    assert adata.uns["spatial"]["C1"]["images"] == {}
    assert list(adata.uns["stcore"]["sections_without_image"]) == ["C1"]
    assert "her2st: 1 sections have no H&E image (C1)" in caplog.text


# ----------------------------------------------------------------------- failures leave no cache


def _no_cache_entry(cache, name, leftovers):
    root = cache / "processed" / name
    assert not list(cache.rglob("adata.h5ad"))
    assert not root.exists() or [p for p in root.iterdir()] == []
    assert leftovers(cache) == []


def test_failed_read_leaves_no_cache(tmp_mirror, isolated_cache, her2st_files, leftovers):
    """A truncated count file in the second section: a DataError naming it, nothing cached."""
    tmp_mirror.copy(*her2st_files("C1"), *her2st_files("D2")[1:])
    data = (tmp_mirror.source / "her2st/ST-cnts/D2.tsv.gz").read_bytes()
    bad = tmp_mirror.put("her2st/ST-cnts/D2.tsv.gz", data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}: truncated or corrupt gzip stream"):
        load("her2st", sections=["C1", "D2"])
    _no_cache_entry(isolated_cache, "her2st", leftovers)


def test_failed_reader_midway_leaves_no_cache(mirror, isolated_cache, monkeypatch, leftovers):
    calls = []
    reader, known = load_module.READERS["visium"]

    def flaky(section, **kw):
        calls.append(section)
        raise OSError("connection reset while reading")

    monkeypatch.setitem(load_module.READERS, "visium", (flaky, known))
    with pytest.raises(OSError, match="connection reset"):
        load("visium_format_sample")
    assert calls == ["visium_format_sample"]
    _no_cache_entry(isolated_cache, "visium_format_sample", leftovers)


def test_failed_write_midway_leaves_no_cache(mirror, isolated_cache, monkeypatch, leftovers):
    """The h5ad write dies half way: no adata.h5ad (complete or partial) and no temporary folder."""
    written = []

    def half_write(self, filename, *args, **kwargs):
        with open(filename, "wb") as fh:
            fh.write(b"\x89HDF\r\n\x1a\n partial")
        written.append(filename)
        raise OSError("No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(ad.AnnData, "write_h5ad", half_write)
        with pytest.raises(OSError, match="No space left"):
            load("visium_format_sample")
    assert len(written) == 1 and not written[0].exists()
    _no_cache_entry(isolated_cache, "visium_format_sample", leftovers)
    # and a later load succeeds and caches
    adata = load("visium_format_sample")
    assert processed_dir("visium_format_sample", adata.uns["stcore"]["key"]).joinpath("adata.h5ad").is_file()
    assert leftovers(isolated_cache) == []


# ----------------------------------------------------------------------------- downstream use


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_squidpy_spatial_scatter_on_mob(mob):
    import squidpy as sq

    adata = mob.copy()
    adata.obs["total counts"] = np.asarray(adata.X.sum(axis=1)).ravel()
    plt.close("all")
    sq.pl.spatial_scatter(adata, library_key="slide_id", library_id=["Rep1", "Rep11"],
                          color=["total counts", "layer"])
    fig = plt.gcf()
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["total counts", "layer"] * 2
    for ax, library in zip(panels, ["Rep1", "Rep1", "Rep11", "Rep11"]):
        entry = adata.uns["spatial"][library]
        assert ax.images[0].get_array().shape == entry["images"]["hires"].shape
        # one circle per spot, centred on obsm['spatial'] × hires scale factor
        spots = adata.obsm["spatial"][(adata.obs["slide_id"] == library).to_numpy()]
        circles = ax.collections[0].get_paths()
        assert len(circles) == len(spots)
        centres = np.array([(p.vertices.min(axis=0) + p.vertices.max(axis=0)) / 2 for p in circles])
        expected = spots * entry["scalefactors"]["tissue_hires_scalef"]
        assert np.abs(np.sort(centres, axis=0) - np.sort(expected, axis=0)).max() < 1.0
    plt.close("all")


def test_section_table(mob):
    table = section_table(mob, label_key="layer")
    assert list(table.index) == ["Rep1", "Rep2", "Rep11", "Rep12"]
    assert table["spots"].sum() == 1091 and table["H&E"].all()
    assert list(table["patient"]) == ["A", "A", "E", "E"]
    assert list(table["split"]) == ["train", "train", "test", "test"]
    assert (table["labelled spots"] <= table["spots"]).all()
    assert (table["median counts/spot"] > 0).all()
