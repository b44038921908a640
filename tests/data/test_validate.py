"""stcore.data.validate: count tables and raw-input checks; every error names the file and the problem."""

from __future__ import annotations

import gzip
import logging
import re

import numpy as np
import pandas as pd
import pytest

from stcore.data.validate import check_counts, check_inside, match_spots, read_count_table
from stcore.errors import DataError

HEADER = "\tGENE1\tGENE2\tFO538757.1\n"
ROWS = "10x14\t0\t3\t1\n11x14\t2\t0\t5\n12x15\t7\t1\t0\n"


def write(path, text: str, *, gz: bool | None = None):
    data = text.encode()
    if gz if gz is not None else path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def error(path, problem: str) -> str:
    """Regex for a DataError message naming ``path`` and then ``problem``."""
    return rf"^{re.escape(str(path))}: {problem}"


# ------------------------------------------------------------------------------------ valid input


@pytest.mark.parametrize("name", ["counts.tsv", "counts.tsv.gz"])
def test_read_valid_table(tmp_path, name):
    frame = read_count_table(write(tmp_path / name, HEADER + ROWS))
    assert list(frame.index) == ["10x14", "11x14", "12x15"]
    assert list(frame.columns) == ["GENE1", "GENE2", "FO538757.1"]
    assert frame.loc["11x14", "FO538757.1"] == 5 and frame.to_numpy().sum() == 19


def test_integer_valued_floats_are_counts(tmp_path):
    frame = read_count_table(write(tmp_path / "c.tsv", "\tA\tB\ns1\t1.0\t2.0\ns2\t0.0\t3\n"))
    np.testing.assert_array_equal(frame.to_numpy(), [[1, 2], [0, 3]])


def test_real_count_file_reads(mirror):
    path = mirror / "her2st/ST-cnts/C2.tsv.gz"
    frame = read_count_table(path)
    raw = pd.read_csv(path, sep="\t", index_col=0)
    assert frame.shape == raw.shape == (187, frame.shape[1])
    assert frame.columns.equals(raw.columns) and frame.index.equals(raw.index)


# -------------------------------------------------------------------------------------- bad files


def test_truncated_gzip(tmp_path):
    data = gzip.compress((HEADER + ROWS * 2000).encode())
    path = tmp_path / "A1.tsv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=error(path, "truncated or corrupt gzip stream")):
        read_count_table(path)


def test_truncated_real_gzip(mirror, tmp_path):
    data = (mirror / "mob/counts/Rep2.tsv.gz").read_bytes()
    path = tmp_path / "Rep2.tsv.gz"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(DataError, match=error(path, "truncated or corrupt gzip stream")):
        read_count_table(path)


def test_not_a_gzip_file(tmp_path):
    path = write(tmp_path / "B1.tsv.gz", HEADER + ROWS, gz=False)
    with pytest.raises(DataError, match=error(path, "not a gzip file")):
        read_count_table(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.tsv.gz"
    with pytest.raises(DataError, match=error(path, "unreadable")):
        read_count_table(path)


def test_empty_section_header_only(tmp_path):
    path = write(tmp_path / "C1.tsv.gz", HEADER)
    with pytest.raises(DataError, match=error(path, r"empty section: 0 spots × 3 genes")):
        read_count_table(path)


def test_empty_section_no_genes(tmp_path):
    path = write(tmp_path / "C1.tsv", "spot\n10x14\n11x14\n")
    with pytest.raises(DataError, match=error(path, r"empty section: 2 spots × 0 genes")):
        read_count_table(path)


def test_empty_file(tmp_path):
    path = write(tmp_path / "D1.tsv.gz", "")
    with pytest.raises(DataError, match=error(path, "empty file: no spots")):
        read_count_table(path)


def test_negative_counts(tmp_path):
    path = write(tmp_path / "E1.tsv", HEADER + ROWS.replace("\t7\t", "\t-7\t"))
    with pytest.raises(DataError, match=error(path, r"negative counts \(1 entries, e\.g\. spot '12x15', "
                                                    r"gene 'GENE1'\)")):
        read_count_table(path)


def test_non_integer_counts(tmp_path):
    path = write(tmp_path / "F1.tsv", HEADER + ROWS.replace("\t3\t", "\t0.25\t"))
    with pytest.raises(DataError, match=error(path, r"non-integer counts \(e\.g\. spot '10x14', "
                                                    r"gene 'GENE2'\).*not normalised")):
        read_count_table(path)


def test_non_numeric_counts(tmp_path):
    path = write(tmp_path / "G1.tsv", HEADER + ROWS.replace("\t3\t", "\tthree\t"))
    with pytest.raises(DataError, match=error(path, r"non-numeric counts in 1 genes, e\.g\. \['GENE2'\]")):
        read_count_table(path)


def test_missing_counts(tmp_path):
    path = write(tmp_path / "G2.tsv", HEADER + ROWS.replace("\t3\t", "\t\t"))
    with pytest.raises(DataError, match=error(path, r"1 missing \(NaN\) counts")):
        read_count_table(path)


def test_duplicated_genes(tmp_path):
    path = write(tmp_path / "H1.tsv.gz", "\tGENE1\tGENE2\tGENE1\n" + ROWS)
    with pytest.raises(DataError, match=error(path, r"duplicate genes: \['GENE1'\]")):
        read_count_table(path)


def test_duplicated_barcodes(tmp_path):
    path = write(tmp_path / "H2.tsv.gz", HEADER + ROWS + "11x14\t1\t1\t1\n")
    with pytest.raises(DataError, match=error(path, r"duplicate spot barcodes: \['11x14'\]")):
        read_count_table(path)


def test_check_counts_on_a_frame():
    frame = pd.DataFrame([[1, 2], [3, 4]], index=["a", "b"], columns=["G", "G"])
    with pytest.raises(DataError, match=r"^m\.h5: duplicate genes: \['G'\]"):
        check_counts(frame, "m.h5")
    check_counts(frame.set_axis(["G", "H"], axis=1), "m.h5")  # no error


# ------------------------------------------------------------------------------------ match_spots


def test_spots_in_counts_but_not_in_spot_file():
    with pytest.raises(DataError, match=r"^spots/A1_selection\.tsv: 1 spots of A1\.tsv\.gz have no "
                                        r"position here, e\.g\. \['9x9'\]"):
        match_spots(pd.Index(["1x1", "2x2", "9x9"]), pd.Index(["1x1", "2x2", "3x3"]),
                    counts_file="cnts/A1.tsv.gz", positions_file="spots/A1_selection.tsv")


def test_spots_in_spot_file_but_not_in_counts_are_dropped(caplog):
    counts = pd.Index(["2x2", "1x1"])
    with caplog.at_level(logging.INFO, logger="stcore"):
        kept = match_spots(counts, pd.Index(["1x1", "2x2", "3x3", "4x4"]),
                           counts_file="cnts/A1.tsv.gz", positions_file="spots/A1_selection.tsv")
    assert list(kept) == ["2x2", "1x1"]  # count-table order
    assert "spots/A1_selection.tsv: 2 spots have a position but no counts in A1.tsv.gz" in caplog.text
    assert "dropped" in caplog.text


def test_spots_in_spot_file_but_not_in_counts_strict():
    with pytest.raises(DataError, match=r"^spots/A1_selection\.tsv: 2 spots have a position but no "
                                        r"counts in A1\.tsv\.gz, e\.g\. \['3x3', '4x4'\]"):
        match_spots(pd.Index(["1x1", "2x2"]), pd.Index(["1x1", "2x2", "3x3", "4x4"]),
                    counts_file="cnts/A1.tsv.gz", positions_file="spots/A1_selection.tsv", strict=True)


def test_matching_spots_pass_strict():
    counts = pd.Index(["1x1", "2x2"])
    assert list(match_spots(counts, counts[::-1], counts_file="c", positions_file="p",
                            strict=True)) == ["1x1", "2x2"]


# ----------------------------------------------------------------------------------- check_inside


def test_check_inside_accepts_image_edges():
    xy = np.array([[0.0, 0.0], [99.9, 49.9], [50, 25]])
    check_inside(xy, (50, 100), path="img.jpg", names=["a", "b", "c"])


@pytest.mark.parametrize("bad", [[100.0, 10.0], [-0.5, 10.0], [10.0, 50.0], [10.0, -3.0]])
def test_pixel_coordinates_outside_the_image(bad):
    xy = np.array([[10.0, 10.0], bad, [20.0, 20.0]])
    message = (r"^spots/B4_selection\.tsv: 1 spot centres lie outside the 100×50 px image, "
               rf"e\.g\. spot 'b' at \({bad[0]:.1f}, {bad[1]:.1f}\)")
    with pytest.raises(DataError, match=message):
        check_inside(xy, (50, 100), path="spots/B4_selection.tsv", names=["a", "b", "c"])
