"""stcore._io: atomic directory and file writes, content keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stcore._io import atomic_dir, atomic_file, content_key, write_json
from stcore._settings import REPO_ROOT


class Boom(Exception):
    pass


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


# -------------------------------------------------------------------------------------- atomic_dir


def test_atomic_dir_creates_final_with_parents(tmp_path, leftovers):
    final = tmp_path / "a" / "b" / "store"
    with atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp != final
        assert not final.exists()  # nothing visible before the body succeeded
        (tmp / "x.txt").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "y.txt").write_text("deep")
    assert _tree(final) == {"x.txt": "new", "sub/y.txt": "deep"}
    assert sorted(p.name for p in final.parent.iterdir()) == ["store"]
    assert leftovers(tmp_path) == []


def test_atomic_dir_keeps_previous_content_when_body_raises(tmp_path, leftovers):
    final = tmp_path / "store"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(Boom):
        with atomic_dir(final) as tmp:
            (tmp / "old.txt").write_text("half-written")
            (tmp / "new.txt").write_text("new")
            raise Boom
    assert _tree(final) == {"old.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert leftovers(tmp_path) == []


def test_atomic_dir_cleans_up_on_keyboard_interrupt(tmp_path, leftovers):
    final = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final) as tmp:
            (tmp / "x").write_text("x")
            raise KeyboardInterrupt
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_previous_content_on_success(tmp_path, leftovers):
    final = tmp_path / "store"
    final.mkdir()
    (final / "old.txt").write_text("old")
    (final / "shared.txt").write_text("v1")
    with atomic_dir(final) as tmp:
        (tmp / "shared.txt").write_text("v2")
        (tmp / "new.txt").write_text("new")
        assert _tree(final) == {"old.txt": "old", "shared.txt": "v1"}  # untouched until the end
    assert _tree(final) == {"new.txt": "new", "shared.txt": "v2"}  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------- atomic_file


def test_atomic_file_writes_text_and_binary(tmp_path, leftovers):
    with atomic_file(tmp_path / "d" / "f.txt") as fh:
        fh.write("hello")
    assert (tmp_path / "d" / "f.txt").read_text() == "hello"
    with atomic_file(tmp_path / "f.bin", mode="wb") as fh:
        fh.write(b"\x00\x01")
    assert (tmp_path / "f.bin").read_bytes() == b"\x00\x01"
    assert leftovers(tmp_path) == []


def test_atomic_file_keeps_previous_content_when_body_raises(tmp_path, leftovers):
    final = tmp_path / "f.txt"
    final.write_text("old")
    with pytest.raises(Boom):
        with atomic_file(final) as fh:
            fh.write("half")
            fh.flush()
            raise Boom
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    assert leftovers(tmp_path) == []


def test_atomic_file_failure_without_previous_file_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with atomic_file(tmp_path / "f.txt") as fh:
            fh.write("half")
            raise Boom
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_replaces_previous_content_on_success(tmp_path, leftovers):
    final = tmp_path / "f.txt"
    final.write_text("old content that is longer")
    with atomic_file(final) as fh:
        fh.write("new")
        assert final.read_text() == "old content that is longer"
    assert final.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_write_json_roundtrip(tmp_path):
    obj = {"b": [1, 2.5, None], "a": {"path": tmp_path}}
    write_json(tmp_path / "x.json", obj)
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": {"path": str(tmp_path)},
                                                              "b": [1, 2.5, None]}


# ------------------------------------------------------------------------------------- content_key


def test_content_key_is_deterministic_and_short():
    parts = ("her2st", ["B4", "C2"], False, {"x": "ab12", "y": "cd34"}, 1)
    key = content_key(*parts)
    assert key == content_key(*parts)
    assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
    assert len(content_key(*parts, length=8)) == 8
    assert content_key(*parts).startswith(content_key(*parts, length=8))


def test_content_key_ignores_dict_order():
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})


def test_content_key_is_stable_across_processes():
    """No per-process randomness (e.g. ``hash()`` of str): the cache must survive a restart."""
    code = "from stcore._io import content_key; print(content_key('mob', ['Rep1'], {'a': 1}, None))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=REPO_ROOT, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
            for seed in ("1", "2")}
    assert outs == {content_key("mob", ["Rep1"], {"a": 1}, None)}


@pytest.mark.parametrize("other", [
    ("mob", ["Rep1", "Rep2"], True),       # a flag
    ("mob", ["Rep2", "Rep1"], False),      # section order
    ("mob", ["Rep1"], False),              # section subset
    ("her2st", ["Rep1", "Rep2"], False),   # dataset
    ("mob", ["Rep1", "Rep2"], False, 2),   # an extra part (e.g. a format version)
    (["mob", "Rep1", "Rep2", False],),     # same items, other structure
])
def test_content_key_changes_with_inputs(other):
    assert content_key(*other) != content_key("mob", ["Rep1", "Rep2"], False)


def test_content_key_changes_with_checksums():
    base = {"her2st/ST-cnts/A1.tsv.gz": "a" * 64}
    assert content_key("her2st", base) != content_key("her2st", {"her2st/ST-cnts/A1.tsv.gz": "b" * 64})
