"""stcore.data.registry: dataset metadata, file registry with sha256, fetching from the mirror."""

from __future__ import annotations

import re

import pytest

from stcore import _settings
from stcore.data import registry
from stcore.errors import ChecksumError, DataError, UnknownDatasetError

SHA256 = re.compile(r"^[0-9a-f]{64}$")


# -------------------------------------------------------------------------------------- metadata


def test_registered_datasets():
    assert set(registry.datasets()) >= {"her2st", "mob", "visium_format_sample"}
    for name, entry in registry.datasets().items():
        assert entry.name == name
        assert entry.spot_diameter_um > 0
        assert entry.sources, f"{name}: no public source"
        assert entry.split_by and set(entry.split) == {"train", "val", "test"}


def test_her2st_and_mob_splits():
    her2st = registry.get("her2st")
    assert her2st.split_by == "patient"
    assert her2st.split == {"train": list("ABCD"), "val": list("EF"), "test": list("GH")}
    assert her2st.spot_diameter_um == 100 and her2st.label_key == "label"
    mob = registry.get("mob")
    assert mob.split == {"train": ["A"], "val": [], "test": ["E"]} and mob.label_key == "layer"


def test_every_dataset_file_has_a_sha256():
    table = registry.file_registry()
    for name, entry in registry.datasets().items():
        assert entry.files, f"{name}: no files in registry.txt"
        for path in entry.files:
            digest, url = table[path]
            assert SHA256.match(digest), f"{path}: bad sha256 {digest!r}"
            assert url is None or url.startswith("https://"), f"{path}: bad url {url!r}"
        assert entry.checksums() == {p: table[p][0] for p in entry.files}
    # annotations and gene panels named by the datasets are registered too
    for entry in registry.datasets().values():
        for extra in (entry.annotation, entry.gene_panel):
            if extra:
                assert extra in table and SHA256.match(table[extra][0])


def test_registry_lists_the_expected_raw_files():
    her2st = registry.get("her2st").files
    sections = [f"{p}{i}" for p in "ABCD" for i in range(1, 7)] + \
               [f"{p}{i}" for p in "EFGH" for i in range(1, 4)]
    for s in sections:
        assert f"her2st/ST-cnts/{s}.tsv.gz" in her2st
        assert f"her2st/ST-spotfiles/{s}_selection.tsv" in her2st
    assert len([p for p in her2st if p.startswith("her2st/ST-cnts/")]) == 36
    assert len([p for p in her2st if p.startswith("her2st/ST-imgs/")]) == 6
    mob = registry.get("mob").files
    assert {f"mob/counts/Rep{i}.tsv.gz" for i in (1, 2, 11, 12)} <= set(mob)
    assert len([p for p in mob if p.startswith("mob/images/")]) == 12
    visium = registry.get("visium_format_sample").files
    assert "visium_format_sample/filtered_feature_bc_matrix.h5" in visium
    assert "visium_format_sample/spatial/tissue_positions_list.csv" in visium


def test_files_without_url_are_conversions():
    """Only files converted from a public source (no URL of their own) lack a download URL."""
    no_url = [p for p, (_, url) in registry.file_registry().items() if url is None]
    assert no_url and all(p.startswith(("mob/", "genesets/")) for p in no_url)


def test_every_registered_file_is_in_the_mirror_and_vice_versa(mirror):
    registered = set(registry.file_registry())
    present = {str(p.relative_to(mirror)) for p in mirror.rglob("*") if p.is_file()}
    assert registered - present == set()
    assert {p for p in present - registered if not p.rsplit("/", 1)[-1].startswith("README")} == set()


# ------------------------------------------------------------------------------------------- get


def test_get_unknown_dataset_lists_registered_names():
    with pytest.raises(UnknownDatasetError, match=r"unknown dataset 'nope'; registered: .*her2st.*mob"):
        registry.get("nope")


def test_get_rejects_non_string():
    with pytest.raises(TypeError, match="must be a str"):
        registry.get(3)


# --------------------------------------------------------------------------------- fetch / verify


def test_fetch_unknown_path_raises_data_error():
    with pytest.raises(DataError, match=r"her2st/ST-cnts/Z9\.tsv\.gz: not in the stcore registry"):
        registry.fetch("her2st/ST-cnts/Z9.tsv.gz")


def test_fetch_reads_from_the_mirror(mirror):
    path = registry.fetch("genesets/her2st_785_genes.txt")
    assert path == mirror / "genesets/her2st_785_genes.txt"
    assert len(path.read_text().split()) == 785
    assert registry.has_file("genesets/her2st_785_genes.txt")


def test_fetch_without_url_and_without_file_names_it(tmp_path, monkeypatch, isolated_cache):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    monkeypatch.setenv(_settings.MIRROR_ENV, str(empty))
    message = rf"^mob/counts/Rep1\.tsv\.gz: not found in mirror {re.escape(str(empty))}.*no public download URL"
    with pytest.raises(DataError, match=message):
        registry.fetch("mob/counts/Rep1.tsv.gz")
    assert not registry.has_file("mob/counts/Rep1.tsv.gz")


def test_fetch_checksum_mismatch(mirror, monkeypatch, isolated_cache):
    path = "genesets/cscc_171_genes.txt"
    monkeypatch.setitem(registry.file_registry(), path, ("0" * 64, None))
    with pytest.raises(ChecksumError, match=rf"{re.escape(str(mirror / path))}: sha256 mismatch: "
                                            r"expected 0{64}, got [0-9a-f]{64}"):
        registry.fetch(path)


def test_verify_wrong_hash(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hello")
    with pytest.raises(ChecksumError, match=rf"{re.escape(str(f))}: sha256 mismatch: expected a{{64}}"):
        registry.verify(f, "a" * 64)
    assert registry.verify(f, registry.sha256(f)) == f


def test_verify_memo_does_not_hide_a_changed_file(tmp_path, isolated_cache):
    f = tmp_path / "x.txt"
    f.write_text("hello")
    good = registry.sha256(f)
    registry.verify(f, good)
    assert (isolated_cache / "verified.json").exists()
    registry.verify(f, good)  # memoised
    f.write_text("hello, replaced")
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        registry.verify(f, good)


# ------------------------------------------------------------------------------------- mirror_dir


def test_mirror_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv(_settings.MIRROR_ENV, str(tmp_path))
    assert _settings.mirror_dir() == tmp_path.resolve()
    monkeypatch.setenv(_settings.MIRROR_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=_settings.MIRROR_ENV):
        _settings.mirror_dir()


def test_mirror_dir_default_beside_repository(tmp_path, monkeypatch):
    monkeypatch.delenv(_settings.MIRROR_ENV, raising=False)
    monkeypatch.setattr(_settings, "REPO_ROOT", tmp_path / "repo")
    assert _settings.mirror_dir() is None
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert _settings.mirror_dir() == tmp_path / "shared" / "data"


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv(_settings.CACHE_ENV, str(tmp_path / "c"))
    assert _settings.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_session_cache_is_used(session_cache):
    assert _settings.cache_dir() == session_cache
