"""Unit: pinned-source resolution order, checksum failures, private apt config, patch application."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from buildsys.core.paths import WorkArea
from buildsys.errors import InputError, PatchError, SourceError
from buildsys.pipeline import patches, sources
from hostpgo.runner import Runner

GOOD = b"the pinned archive\n"


def pin(tmp_path: Path) -> sources.PinnedSource:
    return sources.PinnedSource("demo", "1.0", "demo-1.0.tgz", hashlib.sha256(GOOD).hexdigest(),
                                "https://example.invalid/demo-1.0.tgz", "demo-1.0", "demo", "demo_1.0.orig.tar.gz")


class Fetchers:
    """Fake apt/dnf/url fetchers recording the order in which they were asked."""

    def __init__(self, tmp_path: Path, results: dict[str, bytes | None]) -> None:
        self.calls: list[str] = []
        self.tmp = tmp_path
        self.results = results

    def method(self, origin: str):
        def fetch(p, work, runner):
            self.calls.append(origin)
            data = self.results.get(origin)
            if data is None:
                raise SourceError(f"{origin} unavailable")
            f = self.tmp / f"download-{origin}"
            f.write_bytes(data)
            return f
        return fetch

    def all(self):
        return {o: self.method(o) for o in ("apt", "dnf", "url")}


def resolve(tmp_path: Path, fx: Fetchers, **kw) -> sources.ResolvedSource:
    work = WorkArea(tmp_path / "work")
    return sources.resolve(pin(tmp_path), work, Runner(tmp_path / "log"), methods=fx.all(), **kw)


def test_order_user_then_cache_then_apt_dnf_url(tmp_path: Path) -> None:
    fx = Fetchers(tmp_path, {"apt": None, "dnf": None, "url": GOOD})
    r = resolve(tmp_path, fx)
    assert r.origin == "url" and fx.calls == ["apt", "dnf", "url"]
    assert r.path == tmp_path / "work" / "sources" / "demo-1.0.tgz" and r.path.read_bytes() == GOOD
    fx.calls.clear()
    assert resolve(tmp_path, fx).origin == "cache" and fx.calls == []  # cached copy wins over fetchers
    user = tmp_path / "mine" / "demo_1.0.orig.tar.gz"  # the Debian orig name inside a directory
    user.parent.mkdir()
    user.write_bytes(GOOD)
    assert resolve(tmp_path, fx, user_source=user.parent).origin == "user" and fx.calls == []
    fx2 = Fetchers(tmp_path, {"apt": GOOD})
    (tmp_path / "work" / "sources" / "demo-1.0.tgz").unlink()
    assert resolve(tmp_path, fx2).origin == "apt" and fx2.calls == ["apt"]


def test_bad_download_is_deleted_and_next_method_tried(tmp_path: Path) -> None:
    fx = Fetchers(tmp_path, {"apt": b"tampered", "dnf": None, "url": GOOD})
    r = resolve(tmp_path, fx)
    assert r.origin == "url" and fx.calls == ["apt", "dnf", "url"]
    assert not (tmp_path / "download-apt").exists()
    assert not list((tmp_path / "work" / "sources").glob(".*part"))


def test_all_fail_lists_every_attempt(tmp_path: Path) -> None:
    fx = Fetchers(tmp_path, {"apt": b"tampered"})
    with pytest.raises(SourceError) as e:
        resolve(tmp_path, fx)
    msg = str(e.value)
    assert "apt: checksum mismatch" in msg and "dnf: dnf unavailable" in msg and "url: url unavailable" in msg
    assert "--source PATH" in msg
    assert not (tmp_path / "work" / "sources" / "demo-1.0.tgz").exists()


def test_corrupt_cache_is_deleted(tmp_path: Path) -> None:
    cache = tmp_path / "work" / "sources"
    cache.mkdir(parents=True)
    (cache / "demo-1.0.tgz").write_bytes(b"half a download")
    fx = Fetchers(tmp_path, {"url": GOOD})
    r = resolve(tmp_path, fx)
    assert r.origin == "url" and r.path.read_bytes() == GOOD


def test_user_file_with_wrong_checksum_is_an_error_and_kept(tmp_path: Path) -> None:
    user = tmp_path / "demo-1.0.tgz"
    user.write_bytes(b"wrong")
    with pytest.raises(SourceError, match=r"checksum mismatch for .*demo-1.0.tgz: sha256 [0-9a-f]{64}, pinned"):
        resolve(tmp_path, Fetchers(tmp_path, {}), user_source=user)
    assert user.exists()  # the user's own file is not ours to delete; the cache copy is gone
    assert not (tmp_path / "work" / "sources" / "demo-1.0.tgz").exists()
    with pytest.raises(SourceError, match="no such file"):
        resolve(tmp_path, Fetchers(tmp_path, {}), user_source=tmp_path / "missing.tgz")


def test_pinned_table_has_cpython_3_11_2() -> None:
    p = sources.pinned("cpython", "3.11.2")
    assert p.sha256 == "2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849"
    assert p.deb_file == "python3.11_3.11.2.orig.tar.gz" and p.topdir == "Python-3.11.2"
    with pytest.raises(SourceError, match="no pinned source for cpython 9.9"):
        sources.pinned("cpython", "9.9")


def test_private_apt_sources_from_deb822_and_one_line(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\n# comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
                      "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
                      "Types: deb\nURIs: http://x/disabled\nSuites: s\nComponents: main\nEnabled: no\n")
    one = tmp_path / "sources.list"
    one.write_text("deb [signed-by=/k.gpg] http://archive.ubuntu.com/ubuntu jammy main universe\n"
                   "deb-src http://already/src jammy main\n# deb http://commented out\n")
    text = sources.apt_private_sources([deb822, one, tmp_path / "absent.list"])
    stanzas = text.strip().split("\n\n")
    assert len(stanzas) == 2
    assert stanzas[0].startswith("Types: deb-src\nURIs: http://deb.debian.org/debian\n"
                                 "Suites: bookworm bookworm-updates")
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in stanzas[0]
    assert stanzas[1] == ("Types: deb-src\nURIs: http://archive.ubuntu.com/ubuntu\nSuites: jammy\n"
                          "Components: main universe\nSigned-By: /k.gpg")
    opts = sources.apt_options(WorkArea(tmp_path / "w"))
    paths = [o.split("=", 1)[1] for o in opts if o.startswith("Dir::")]
    assert paths and all(p.startswith(str(tmp_path / "w" / "apt")) for p in paths)


def test_unpack_refuses_escaping_members(tmp_path: Path) -> None:
    arc = tmp_path / "evil.tgz"
    with tarfile.open(arc, "w:gz") as tar:
        info = tarfile.TarInfo("demo-1.0/../../etc/x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(SourceError, match="outside demo-1.0/"):
        sources.unpack(arc, tmp_path / "out", "demo-1.0")


def _tree(tmp_path: Path) -> Path:
    t = tmp_path / "tree"
    t.mkdir()
    (t / "a.c").write_text("int a(void)\n{\n    return 1;\n}\n")
    return t


def _patch(d: Path, name: str, old: str, new: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text("--- a/a.c\n+++ b/a.c\n@@ -1,4 +1,4 @@\n int a(void)\n {\n"
                 f"-    return {old};\n+    return {new};\n }}\n")
    return p


def test_patches_apply_in_order_and_failure_names_patch_and_hunk(tmp_path: Path) -> None:
    pdir = tmp_path / "patches" / "demo" / "1.0"
    _patch(pdir, "0001-two.patch", "1", "2")
    _patch(pdir, "0002-three.patch", "2", "3")
    series = patches.series("demo", "1.0", tmp_path / "patches")
    assert [p.name for p in series] == ["0001-two.patch", "0002-three.patch"]
    tree = _tree(tmp_path)
    patches.apply_series(tree, series, Runner(tmp_path / "p.log"))
    assert "return 3;" in (tree / "a.c").read_text()

    _patch(pdir, "0003-stale.patch", "1", "4")  # context no longer matches after 0001/0002
    tree2 = tmp_path / "t2"
    tree2.mkdir()
    (tree2 / "a.c").write_text((tmp_path / "tree" / "a.c").read_text().replace("3", "1"))
    with pytest.raises(PatchError) as e:
        patches.apply_series(tree2, patches.series("demo", "1.0", tmp_path / "patches"), Runner(tmp_path / "p2.log"))
    msg = str(e.value)
    assert "0003-stale.patch did not apply" in msg and "a.c: hunk #1 FAILED at line 1" in msg


def test_patch_names_must_be_numbered(tmp_path: Path) -> None:
    d = tmp_path / "patches" / "demo" / "1.0"
    d.mkdir(parents=True)
    (d / "fix.patch").write_text("")
    with pytest.raises(PatchError, match="NNNN-<what>.patch"):
        patches.series("demo", "1.0", tmp_path / "patches")


def test_user_source_is_checked_when_prepared(tmp_path: Path) -> None:
    """--source that does not exist, or whose checksum is wrong: InputError (exit 2) naming the flag and file."""
    pin = sources.pinned("cpython", "3.11.2")
    with pytest.raises(InputError, match=r"--source .*absent.tgz: no such file or directory") as e:
        sources.check_user_source(pin, tmp_path / "absent.tgz")
    assert e.value.exit_code == 2
    wrong = tmp_path / "Python-3.11.2.tgz"
    wrong.write_bytes(b"not the release")
    with pytest.raises(InputError, match=rf"--source {wrong}: sha256 [0-9a-f]{{64}}, pinned {pin.sha256}"):
        sources.check_user_source(pin, wrong)
    with pytest.raises(InputError, match=rf"--source {wrong}: sha256"):
        sources.check_user_source(pin, tmp_path)  # a directory holding a wrong copy
    assert wrong.read_bytes() == b"not the release"  # the user's file is left alone
