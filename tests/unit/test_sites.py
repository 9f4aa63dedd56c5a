"""sagews/backend/sites.py: which files of a folder a published site holds (the site end to end, through
the backend and the viewer, is tests/browser/test_browser_publish.py)."""

import base64
import io
import json
import stat
import zipfile

import pytest

from sagews.backend import sites
from sagews.backend.workspaces import WorkspaceError


def archive(files: dict[str, bytes], links=()) -> bytes:
    """A zip as `git archive --format=zip` makes it (directories as entries, symlinks by mode)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for d in sorted({p.rsplit("/", 1)[0] + "/" for p in files if "/" in p}):
            zf.writestr(d, b"")
        for p, data in files.items():
            zf.writestr(p, data)
        for p, target in links:
            info = zipfile.ZipInfo(p)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 20


def test_site_keys():
    assert sites.site_key("") == sites.site_key(".") == sites.site_key("/") == "/"
    assert sites.site_key("notes") == sites.site_key("notes/") == sites.site_key("/notes/") == "notes/"
    assert sites.site_key("a/b") == "a/b/"
    for bad in ("../x", "a/../b", "a//b", ".git", "a/.git/x", 3, None):
        with pytest.raises(WorkspaceError):
            sites.site_key(bad)


def test_a_folder_snapshot():
    z = archive(
        {
            "course/index.md": b"# hi",
            "course/sub/w.sagews": b"#sagews worksheet v1\n",
            "course/plot.png": PNG,
            "course/blob.bin": b"\xff\xfe\0",
            "course/.secret": b"dotfile",
            "course/.keep": b"",
            "other/x.txt": b"outside",
            "courses.txt": b"prefix, not the folder",
        },
        links=[("course/link", b"/etc/passwd")],
    )
    doc = json.loads(sites.build(z, "course/"))
    assert set(doc["files"]) == {"index.md", "sub/w.sagews", "plot.png"}
    assert doc["files"]["index.md"] == {"text": "# hi"}
    assert base64.b64decode(doc["files"]["plot.png"]["b64"]) == PNG
    skipped = {s["path"]: s["reason"] for s in doc["skipped"]}
    assert skipped == {"blob.bin": "binary file", "link": "symbolic link"}
    whole = json.loads(sites.build(z, "/"))
    assert {"other/x.txt", "courses.txt", "course/index.md"} <= set(whole["files"])


def test_caps_and_empty_folders(monkeypatch):
    monkeypatch.setattr(sites, "MAX_FILE", 10)
    monkeypatch.setattr(sites, "MAX_FILES", 2)
    z = archive({"d/a": b"1", "d/b": b"2", "d/c": b"3", "d/big": b"x" * 11})
    doc = json.loads(sites.build(z, "d/"))
    assert len(doc["files"]) == 2
    assert len(doc["skipped"]) == 2
    with pytest.raises(WorkspaceError, match="Nothing to publish"):
        sites.build(z, "nothing/")
