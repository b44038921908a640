"""stcore.data.patches: spot patches from the H&E, cached in a memory-mapped store."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from stcore.data import PatchStore, extract_patches, processed_dir
from stcore.data.patches import crop_patch, patch_size_px
from stcore.errors import DataError

patches_module = importlib.import_module("stcore.data.patches")


@pytest.fixture(scope="module")
def store(her2st_mixed):
    """Patches of her2st A1 (no image), B4 (image), E3 and G2 (no image): 100 µm crops, 32 px."""
    return extract_patches(her2st_mixed, size_um=100, out_px=32)


def _b4(adata):
    return adata[(adata.obs["slide_id"] == "B4").to_numpy()]


def _stores(adata):
    return sorted(processed_dir("her2st", adata.uns["stcore"]["key"]).glob("patches-*"))


# --------------------------------------------------------------------------------------- her2st B4


def test_one_patch_per_spot_with_image(store, her2st_mixed):
    b4 = _b4(her2st_mixed)
    assert len(store) == b4.n_obs == 283
    assert store.images.dtype == np.uint8 and store.images.shape == (283, 32, 32, 3)
    assert list(store.obs_names) == list(b4.obs_names)
    assert store.meta["excluded_sections"] == ["A1", "E3", "G2"]
    assert store.meta["n"] == 283 and store.meta["adata_key"] == her2st_mixed.uns["stcore"]["key"]
    assert store.path.parent == processed_dir("her2st", her2st_mixed.uns["stcore"]["key"])
    assert store.path.name.startswith("patches-")
    assert isinstance(store.images, np.memmap)


def test_patches_show_the_tissue_under_each_spot(store, her2st_mixed):
    """Each patch matches a crop of the (independently scaled) hires image at the same place."""
    b4 = _b4(her2st_mixed)
    entry = b4.uns["spatial"]["B4"]
    hires, scale = entry["images"]["hires"], entry["scalefactors"]["tissue_hires_scalef"]
    side = int(round(store.meta["crop_px"]["B4"] * scale))
    rng = np.random.default_rng(0)
    picks = rng.choice(b4.n_obs, 25, replace=False)
    own, shifted = [], []
    for i in picks:
        patch = store.get([b4.obs_names[i]])[0].astype(float)
        ref = crop_patch(hires, b4.obsm["spatial"][i] * scale, side, 32).astype(float)
        other = crop_patch(hires, b4.obsm["spatial"][(i + 40) % b4.n_obs] * scale, side, 32).astype(float)
        own.append(np.abs(patch - ref).mean())
        shifted.append(np.abs(patch - other).mean())
    assert np.mean(own) < 12 and np.mean(own) < 0.5 * np.mean(shifted)
    assert store.images.mean(axis=(1, 2, 3)).max() < 250  # tissue, not white padding


def test_get_returns_patches_in_the_order_asked(store):
    names = list(store.obs_names[[5, 0, 3]])
    np.testing.assert_array_equal(store.get(names), store.images[[5, 0, 3]])
    with pytest.raises(KeyError, match=r"1 spots have no patch \(no image\?\), e\.g\. \['A1_17x14'\]"):
        store.get([store.obs_names[0], "A1_17x14"])


def test_second_call_reads_the_cached_store(store, her2st_mixed, monkeypatch):
    def no_image(*args, **kwargs):
        raise AssertionError("the image must not be read again: the store is cached")

    monkeypatch.setattr(patches_module, "read_image", no_image)
    again = extract_patches(her2st_mixed, size_um=100, out_px=32)
    assert again.path == store.path
    np.testing.assert_array_equal(again.images, store.images)
    assert again.meta == store.meta
    reopened = PatchStore.open(store.path)
    assert list(reopened.obs_names) == list(store.obs_names)
    # other parameters: another store, computed (here: the image read fails)
    with pytest.raises(AssertionError, match="must not be read again"):
        extract_patches(her2st_mixed, size_um=100, out_px=16)


def test_size_px_and_size_um_agree_with_spot_diameter(store, her2st_mixed, tmp_path):
    diameter = her2st_mixed.uns["spatial"]["B4"]["scalefactors"]["spot_diameter_fullres"]
    assert patch_size_px(her2st_mixed, "B4", size_px=None, size_um=100) == round(diameter) == 145
    assert patch_size_px(her2st_mixed, "B4", size_px=None, size_um=200) == round(2 * diameter)
    assert patch_size_px(her2st_mixed, "B4", size_px=145, size_um=None) == 145
    assert store.meta["crop_px"] == {"B4": round(diameter)}
    # the same crops given in pixels (a few spots, store of their own)
    some = _b4(her2st_mixed)[:8].copy()
    in_px = extract_patches(some, size_px=round(diameter), out_px=32, store_dir=tmp_path)
    assert in_px.path.parent == tmp_path and in_px.meta["crop_px"] == {"B4": 145}
    np.testing.assert_array_equal(in_px.images, store.get(list(some.obs_names)))


def test_visium_patches_from_hires(visium):
    """Without a full-resolution image the crops come from the hires image, same size in µm."""
    patches = extract_patches(visium, size_um=55, out_px=16)
    assert patches.images.shape == (100, 16, 16, 3) and patches.images.dtype == np.uint8
    spot = visium.uns["spatial"]["visium_format_sample"]["scalefactors"]["spot_diameter_fullres"]
    assert patches.meta["crop_px"] == {"visium_format_sample": round(spot)}
    assert list(patches.obs_names) == list(visium.obs_names)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs, error, message", [
    ({"size_px": "145"}, TypeError, "size_px must be a positive int"),
    ({"size_px": 14.5}, TypeError, "size_px must be a positive int"),
    ({"size_px": 0}, TypeError, "size_px must be a positive int"),
    ({"size_um": -100}, TypeError, "size_um must be a positive number"),
    ({"size_um": "100"}, TypeError, "size_um must be a positive number"),
    ({"size_px": 145, "size_um": 100}, ValueError, "exactly one of size_px or size_um"),
    ({}, ValueError, "exactly one of size_px or size_um"),
    ({"size_um": 100, "out_px": 0}, TypeError, "out_px must be a positive int"),
    ({"size_um": 100, "out_px": 32.0}, TypeError, "out_px must be a positive int"),
])
def test_bad_parameters(her2st_mixed, kwargs, error, message, leftovers):
    before = _stores(her2st_mixed)
    with pytest.raises(error, match=message):
        extract_patches(her2st_mixed, **kwargs)
    assert _stores(her2st_mixed) == before
    assert leftovers(processed_dir("her2st", her2st_mixed.uns["stcore"]["key"])) == []


def test_adata_not_from_load_needs_store_dir(her2st_mixed):
    adata = her2st_mixed.copy()
    del adata.uns["stcore"]["key"]
    with pytest.raises(ValueError, match="not made by stcore.data.load; pass store_dir="):
        extract_patches(adata, size_um=100, out_px=32)


def test_no_section_with_image(her2st_mixed, tmp_path):
    a1 = her2st_mixed[(her2st_mixed.obs["slide_id"] == "A1").to_numpy()].copy()
    with pytest.raises(DataError, match=r"^her2st: no section has an H&E image; nothing to crop"):
        extract_patches(a1, size_um=100, out_px=32, store_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_no_store(her2st_mixed, monkeypatch, leftovers):
    """A crop fails after 10 spots: no patches-* folder, no temporary folder."""
    entry = her2st_mixed.uns["spatial"]["B4"]["metadata"]
    shape = (entry["fullres_height"], entry["fullres_width"], 3)
    # a grey full-resolution image without allocating it (the real decode is tested above)
    monkeypatch.setattr(patches_module, "read_image",
                        lambda path, **kw: (np.broadcast_to(np.uint8(128), shape), 1.0))
    calls = []
    real_crop = patches_module.crop_patch

    def crop_then_fail(*args):
        calls.append(1)
        if len(calls) > 10:
            raise OSError("image stream ended")
        return real_crop(*args)

    monkeypatch.setattr(patches_module, "crop_patch", crop_then_fail)
    before = _stores(her2st_mixed)
    with pytest.raises(OSError, match="image stream ended"):
        extract_patches(her2st_mixed, size_um=100, out_px=24)
    assert len(calls) == 11
    assert _stores(her2st_mixed) == before
    assert leftovers(processed_dir("her2st", her2st_mixed.uns["stcore"]["key"])) == []


# -------------------------------------------------------------------------------------- crop_patch


@pytest.fixture
def image():
    """10 × 12 px RGB: red channel = row, green = column, blue = 7."""
    rows, cols = np.mgrid[0:10, 0:12]
    return np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)


def test_crop_inside(image):
    patch = crop_patch(image, (6, 4), 4, 4)  # centre x=6, y=4
    np.testing.assert_array_equal(patch, image[2:6, 4:8])
    assert patch.dtype == np.uint8


def test_crop_pads_white_at_top_left(image):
    patch = crop_patch(image, (0, 0), 6, 6)
    assert (patch[:3] == 255).all() and (patch[:, :3] == 255).all()
    np.testing.assert_array_equal(patch[3:, 3:], image[:3, :3])


def test_crop_pads_white_at_bottom_right(image):
    patch = crop_patch(image, (11, 9), 6, 6)  # x0 = 8, y0 = 6
    np.testing.assert_array_equal(patch[:4, :4], image[6:10, 8:12])
    assert (patch[4:] == 255).all() and (patch[:, 4:] == 255).all()


def test_crop_outside_is_white(image):
    assert (crop_patch(image, (100, 100), 6, 6) == 255).all()
    assert (crop_patch(image, (-20, 5), 6, 6) == 255).all()


def test_crop_resizes(image):
    patch = crop_patch(np.full((50, 50, 3), 90, np.uint8), (25, 25), 20, 8)
    assert patch.shape == (8, 8, 3) and patch.dtype == np.uint8 and (patch == 90).all()
    big = crop_patch(image, (6, 5), 8, 16)
    assert big.shape == (16, 16, 3)
    assert big[0, 0, 0] < big[-1, -1, 0] and big[0, 0, 1] < big[-1, -1, 1]  # orientation kept
