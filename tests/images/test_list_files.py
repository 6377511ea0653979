"""List files as spreadsheets and scripts write them: every case is checked against the paths
and labels a scan of it records (the grammar is in the README and cnnviz/images/library.py)."""

from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnnviz import ImageLibrary, scan
from cnnviz.cli import main
from cnnviz.errors import CnnvizWarning, UsageError

NAMES = ["a.png", "b, c.png", 'say "hi".png', "#1.png", "sub/d.png"]


@pytest.fixture
def folder(tmp_path):
    """Five small images with awkward names, a list file's folder."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in NAMES:
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / name)
    return root


def _scanned(list_file, tiny_model, tmp_path) -> dict[str, str]:
    """path -> label as the run file records them (label '' when none)."""
    run = scan(list_file, tiny_model, tmp_path / "run.h5", top_k=1, workers=0, progress=False, overwrite=True)
    with h5py.File(run, "r") as f:
        paths = list(f["images/path"].asstr()[()])
        labels = list(f["images/label"].asstr()[()]) if "images/label" in f else [""] * len(paths)
        assert f["images/ok"][()].all(), "every listed image was found and read"
    return dict(zip(paths, labels, strict=True))


CASES = {
    # what Excel writes for "CSV UTF-8": a byte-order mark, CRLF, quotes where needed
    "excel utf-8 csv": ("\ufeffpath,label\r\na.png,cat\r\n\"b, c.png\",dog\r\n\"say \"\"hi\"\".png\",cat\r\n"
                        ).encode("utf-8"),
    # Excel's "Unicode text": UTF-16 with its byte-order mark, tab-separated
    "excel unicode text": "filename\tclass\r\na.png\tcat\r\nb, c.png\tdog\r\n".encode("utf-16"),
    "no header, no labels": b"a.png\nsub/d.png\n",
    "blank lines and comments": b"# my photos\n\na.png,cat\n   \n  # sub/d.png,dog\n\"#1.png\",bird\n\n",
    "tab-separated": b"a.png\tcat\nsub/d.png\tdog\n",
    "old mac line ends": b"a.png,cat\rsub/d.png,dog\r",
    "unquoted comma, as find writes": b"./b, c.png\n./a.png\n",
    "spaces around fields": b"  a.png ,  cat  \n sub/d.png , dog\n",
}
EXPECTED = {
    "excel utf-8 csv": {"a.png": "cat", "b, c.png": "dog", 'say "hi".png': "cat"},
    "excel unicode text": {"a.png": "cat", "b, c.png": "dog"},
    "no header, no labels": {"a.png": "", "sub/d.png": ""},
    "blank lines and comments": {"a.png": "cat", "#1.png": "bird"},
    "tab-separated": {"a.png": "cat", "sub/d.png": "dog"},
    "old mac line ends": {"a.png": "cat", "sub/d.png": "dog"},
    "unquoted comma, as find writes": {"a.png": "", "b, c.png": ""},
    "spaces around fields": {"a.png": "cat", "sub/d.png": "dog"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_list_file_is_read_as_it_was_written(case, folder, tiny_model, tmp_path):
    listing = folder / "list.csv"
    listing.write_bytes(CASES[case])
    assert _scanned(listing, tiny_model, tmp_path) == EXPECTED[case]


def test_a_pandas_csv_with_its_index_column(folder, tiny_model, tmp_path):
    listing = folder / "list.csv"
    pd.DataFrame({"path": ["a.png", "b, c.png"], "label": ["cat", "dog"]}).to_csv(listing)  # index=True
    assert listing.read_text().startswith(",path,label")
    assert _scanned(listing, tiny_model, tmp_path) == {"a.png": "cat", "b, c.png": "dog"}


def test_paths_are_relative_to_the_list_files_folder(folder, tiny_model, tmp_path, monkeypatch):
    """Not to the working directory; absolute paths are kept as they are."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    Image.new("RGB", (30, 30), (1, 2, 3)).save(elsewhere / "a.png")  # a decoy where the scan runs
    listing = folder / "sub" / "list.txt"
    listing.write_text(f"d.png\n../a.png\n{folder / 'b, c.png'}\n")
    scanned = _scanned(listing, tiny_model, tmp_path)
    assert scanned == {"d.png": "", "../a.png": "", str(folder / "b, c.png"): ""}
    lib = ImageLibrary.open(listing)
    assert [lib.path(i).resolve() for i in range(len(lib))] == [
        (folder / "a.png").resolve(), (folder / "b, c.png").resolve(), (folder / "sub" / "d.png").resolve()]


def test_an_image_listed_twice_is_scanned_once(folder, tiny_model, tmp_path):
    """However it is spelled; so it can never fill two slots of a channel's top-k."""
    listing = folder / "list.csv"
    absolute = folder / "sub" / "d.png"
    listing.write_text(f"a.png,cat\nsub/d.png,dog\n./a.png,cat\nsub/../a.png,cat\n{absolute},dog\n")
    with pytest.warns(CnnvizWarning, match=r"lists 3 images more than once \(e.g. a.png on lines 1 and 3\)"):
        lib = ImageLibrary.open(listing)
    assert lib.relpaths == ["a.png", "sub/d.png"] and lib.labels == ["cat", "dog"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CnnvizWarning)
        run = scan(listing, tiny_model, tmp_path / "run.h5", top_k=2, workers=0, progress=False)
    with h5py.File(run, "r") as f:
        assert list(f["images/path"].asstr()[()]) == ["a.png", "sub/d.png"]
        for name in f["layers"]:
            ids = f[f"layers/{name}/topk/image_id"][()]
            assert all(sorted(row) == [0, 1] for row in ids.tolist())


def test_the_command_line_shows_a_warning_as_one_note(folder, tmp_path, capsys):
    listing = folder / "list.csv"
    listing.write_text("a.png\n./a.png\nsub/d.png\n")
    assert main(["scan", str(listing), "--model", "squeezenet1_1", "--weights", "none", "--layers",
                 "features.3", "--top-k", "2", "--workers", "0", "--no-progress",
                 "--out", str(tmp_path / "r.h5")]) == 0
    err = capsys.readouterr().err
    assert "cnnviz scan: note: " in err
    assert "lists an image more than once (e.g. a.png on lines 1 and 2)" in err
    assert "Warning" not in err and "warnings.warn" not in err


def test_an_image_listed_twice_with_two_labels_is_refused_with_its_lines(folder, tmp_path, capsys):
    listing = folder / "list.csv"
    listing.write_text("path,label\na.png,cat\nsub/d.png,dog\n./a.png,bird\n")
    with pytest.raises(UsageError, match=r"line 2 and line 4 both list a.png, labelled 'cat' and 'bird'"):
        ImageLibrary.open(listing)
    assert main(["scan", str(listing), "--model", "resnet18", "--weights", "none", "--workers", "0",
                 "--out", str(tmp_path / "r.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LIBRARY" in err and "line 2 and line 4" in err
    assert list(tmp_path.glob("r.h5*")) == []


@pytest.mark.parametrize("text, message", [
    ('a.png\n"b, c.png,dog\n', "line 2: cannot read it as a CSV line"),
    ("path,label\na.png,cat\n,dog\n", "line 3: no image path in column 1"),
])
def test_a_malformed_line_is_named(folder, text, message):
    listing = folder / "list.csv"
    listing.write_text(text)
    with pytest.raises(UsageError, match=message):
        ImageLibrary.open(listing)


def test_a_list_file_that_is_not_text_is_refused(folder):
    listing = folder / "list.txt"
    listing.write_bytes(b"a.png\n\xff\xfe\xfa not text\n")
    with pytest.raises(UsageError, match="not a UTF-8 text file"):
        ImageLibrary.open(listing)
    assert os.path.exists(listing)
