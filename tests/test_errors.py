"""stcore.errors: messages name the file (or dataset) and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from stcore.errors import ChecksumError, DataError, UnknownDatasetError


def test_data_error_names_file_and_problem():
    err = DataError(Path("her2st/ST-cnts/A1.tsv.gz"), "truncated gzip stream")
    assert str(err) == "her2st/ST-cnts/A1.tsv.gz: truncated gzip stream"
    assert err.path == "her2st/ST-cnts/A1.tsv.gz" and err.problem == "truncated gzip stream"
    assert isinstance(err, ValueError)  # callers catching ValueError still catch it


def test_checksum_error_is_a_data_error():
    err = ChecksumError("x.jpg", "sha256 mismatch")
    assert isinstance(err, DataError) and str(err) == "x.jpg: sha256 mismatch"
    with pytest.raises(DataError, match=r"^x\.jpg: sha256 mismatch$"):
        raise err


def test_unknown_dataset_error_message_is_not_quoted():
    err = UnknownDatasetError("unknown dataset 'x'; registered: her2st, mob")
    assert isinstance(err, KeyError)
    # KeyError's str() would wrap the message in quotes; this one reads as written
    assert str(err) == "unknown dataset 'x'; registered: her2st, mob"
