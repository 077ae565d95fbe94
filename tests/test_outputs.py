"""outputs.py: which paths a command may write, which folders ``--force`` may replace, and how."""

import json
import os
import stat

import pytest

from rfcache.outputs import (
    OutputError,
    check_file_output,
    check_folder_output,
    file_mode,
    folder_mode,
    replace_folder,
    write_file,
)


def _bundle(folder):
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": "rfcache-bundle"}))
    (folder / "full.onnx").write_bytes(b"old")
    return folder


def test_the_bundle_marker_is_the_bundle_format():
    from rfcache.export.manifest import BUNDLE_FORMAT, MANIFEST
    from rfcache.outputs import BUNDLE_MARKER

    assert BUNDLE_MARKER == (MANIFEST, "format", BUNDLE_FORMAT)


def test_force_replaces_only_a_bundle_or_an_empty_folder(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(OutputError, match=r"--out .*precious: not an rfcache bundle and not empty"):
        check_folder_output(precious, flag="--out", force=True)
    built = tmp_path / ".built"
    built.mkdir()
    with pytest.raises(OutputError, match="not an rfcache bundle"):  # checked again right before removing
        replace_folder(built, precious, force=True)
    assert (precious / "thesis.txt").read_text() == "years of work"
    # a folder whose manifest merely mentions the format in another field is not a bundle
    (precious / "manifest.json").write_text(json.dumps({"name": "rfcache-bundle"}))
    with pytest.raises(OutputError, match="not an rfcache bundle"):
        check_folder_output(precious, force=True)
    (tmp_path / "empty").mkdir()
    assert check_folder_output(tmp_path / "empty", force=True) == tmp_path / "empty"
    old = _bundle(tmp_path / "old")
    with pytest.raises(OutputError, match="already exists; choose another --out or pass --force"):
        check_folder_output(old, flag="--out")
    (built / "full.onnx").write_bytes(b"new")
    replace_folder(built, old, force=True)
    assert (old / "full.onnx").read_bytes() == b"new" and not built.exists()
    assert stat.S_IMODE(old.stat().st_mode) == folder_mode()  # not mkdtemp's 0700


def test_the_working_directory_and_above_are_never_replaced(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "manifest.json").write_text(json.dumps({"format": "rfcache-bundle"}))  # even a bundle
    monkeypatch.chdir(work)
    for target in (".", "..", str(tmp_path), "/", str(work)):
        with pytest.raises(OutputError, match="working directory, a folder above it or /; never replaced"):
            check_folder_output(target, flag="--out", force=True)
    assert (work / "manifest.json").exists()
    (work / "f").write_text("x")
    with pytest.raises(OutputError, match="--out f: exists and is not a folder"):
        check_folder_output("f", flag="--out", force=True)


def test_file_outputs_are_checked_without_creating_anything(tmp_path):
    (tmp_path / "adir").mkdir()
    before = sorted(tmp_path.rglob("*"))
    cases = [
        (tmp_path / "adir", None, "is a folder; give a plot name"),
        (tmp_path / "x.jpg", (".png",), "a plot is written as .png"),
        (tmp_path / "x.webp", (".png", ".gif", ".mp4"), r"written as \.png, \.gif or \.mp4"),
    ]
    if os.path.isdir("/proc/self"):  # no file can be created in /proc, even by root
        cases.append(("/proc/x.png", (".png",), "--plot /proc/x.png: cannot create a file in /proc"))
    for path, suffixes, message in cases:
        with pytest.raises(OutputError, match=message):
            check_file_output(path, flag="--plot", suffixes=suffixes, what="plot")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        check_file_output(tmp_path / "file" / "x.png", flag="--plot")
    assert check_file_output(tmp_path / "new" / "deeper" / "x.png", suffixes=(".png",)) == (
        tmp_path / "new" / "deeper" / "x.png"
    )
    assert sorted(tmp_path.rglob("*")) == [*before, tmp_path / "file"]


def test_write_file_is_atomic_follows_the_umask_and_names_the_users_path(tmp_path):
    out = write_file(tmp_path / "sub" / "r.json", lambda tmp: tmp.write_text("{}"))
    assert out.read_text() == "{}" and stat.S_IMODE(out.stat().st_mode) == file_mode()

    def fails(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError) as caught:
        write_file(tmp_path / "r.json", fails, flag="--json")
    assert str(caught.value) == f"--json {tmp_path / 'r.json'}: cannot write (No space left on device)"
    assert out.read_text() == "{}" and sorted(p.name for p in tmp_path.rglob("*")) == ["r.json", "sub"]
