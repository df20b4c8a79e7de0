"""Zoo archives end to end: the tiny zoo, trained and measured for real, exported with ``genbench export`` and
imported with ``genbench import`` from a path and from a URL served by a real local HTTP server. The imported
store must equal the source (every row, every tensor bit for bit, the same leaderboard), importing into a store
that holds part of the zoo merges as ``genbench collect`` does, and every damaged or foreign archive is one line,
exit status 2, with the destination byte for byte as it was (or still absent)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import re
import shutil
import sqlite3
import tarfile
import threading
from pathlib import Path

import pytest

from benchmark import pipeline
from benchmark.store import MergeConflict, Store, archive
from benchmark.store.archive import FORMAT, MANIFEST, ArchiveError
from benchmark.store.db import SCHEMA_VERSION
from tests.conftest import TINY, TINY_MEASURES, TINY_MODELS, make_cfg
from tests.integration.test_cli import genbench
from tests.integration.test_faults_store import _fails_in_one_line, _read_only
from tests.integration.test_faults_store import tmpfs as tmpfs  # a fixture

TABLES = ("models", "measurements", "early", "meta")


def _contents(root: Path) -> tuple:
    """What a store holds: its tables' rows and every other file's sha256. The SQLite file's bytes are left out:
    closing its last connection may fold the write-ahead log into it, which changes the bytes, not the rows."""
    files = {k: v for k, v in _files(root).items() if not k.startswith("genbench.sqlite")}
    return _rows(root), files


@pytest.fixture(scope="module")
def zoo(_tiny_zoo_store, tmp_path_factory) -> dict:
    """The tiny zoo's store with the Hydra config of a real ``genbench measure`` run and a cache folder beside it,
    and its archive written by ``genbench export`` (never modified: copy them)."""
    folder = tmp_path_factory.mktemp("archive")
    source = folder / "source"
    shutil.copytree(_tiny_zoo_store, source)
    out = genbench("measure", *TINY, f"store.root={source}", cwd=folder)
    assert out.returncode == 0, out.stderr[-2000:]
    (source / "cache").mkdir(exist_ok=True)
    (source / "cache" / "scores.bin").write_bytes(b"not part of a zoo")
    out = genbench("export", *TINY, f"store.root={source}", "export.path=zoo.tar", cwd=folder)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"exported {source}: {TINY_MODELS} models, {TINY_MODELS * TINY_MEASURES} measurements, " \
           f"{TINY_MODELS * 6} early values, 3 run configs → {folder / 'zoo.tar'}" in out.stdout
    return {"folder": folder, "source": source, "archive": folder / "zoo.tar"}


def _rows(root: Path) -> dict:
    with sqlite3.connect(f"file:{root / 'genbench.sqlite'}?mode=ro", uri=True) as db:
        return {t: sorted(db.execute(f"SELECT * FROM {t}")) for t in TABLES}


def _same_tensors(a: dict, b: dict) -> None:
    """Two state dicts hold the same names in the same order, and each tensor the same dtype, shape and bits."""
    assert list(a) == list(b)
    for name in a:
        assert (a[name].dtype, a[name].shape) == (b[name].dtype, b[name].shape), name
        assert a[name].contiguous().numpy().tobytes() == b[name].contiguous().numpy().tobytes(), name


def _same_store(got: Path, want: Path) -> None:
    assert _rows(got) == _rows(want)
    g, w = Store(got, readonly=True), Store(want, readonly=True)
    assert g.model_ids() == w.model_ids()
    for model_id in w.model_ids():
        for x, y in zip(g.load_states(model_id), w.load_states(model_id), strict=True):
            _same_tensors(x, y)
        snaps, want_snaps = g.load_snapshots(model_id), w.load_snapshots(model_id)
        assert len(snaps) == len(want_snaps) == 3
        for s, t in zip(snaps, want_snaps):
            assert (s["fraction"], s["epoch"]) == (t["fraction"], t["epoch"])
            _same_tensors(s["state"], t["state"])
        assert g.checkpoint_path(model_id).read_bytes() == w.checkpoint_path(model_id).read_bytes()


def _files(root: Path) -> dict | None:
    """Every file under ``root`` with its sha256 (None if ``root`` does not exist)."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def server(zoo):
    """A real HTTP server on 127.0.0.1 serving the archive's folder, in a thread."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(zoo["folder"]))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()


def test_the_archive_holds_the_manifest_index_weights_and_configs_and_nothing_else(zoo):
    with tarfile.open(zoo["archive"]) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(MANIFEST).read())
        data = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    ids = sorted(Store(zoo["source"], readonly=True).model_ids())
    assert names[:2] == [MANIFEST, "index.sqlite"]
    assert sorted(n for n in names if n.startswith("weights/")) == sorted(
        [f"weights/{i}.safetensors" for i in ids] + [f"weights/{i}.early.safetensors" for i in ids])
    configs = sorted(n for n in names if n.startswith("configs/"))
    assert [Path(n).name for n in configs] == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert not [n for n in names if "cache" in n or n.endswith(".pt")]
    assert (manifest["format"], manifest["format_version"], manifest["schema_version"]) == (FORMAT, 1, SCHEMA_VERSION)
    assert manifest["counts"] == {"models": TINY_MODELS, "measurements": TINY_MODELS * TINY_MEASURES,
                                  "early": TINY_MODELS * 3 * 2, "configs": 3}
    assert set(manifest["files"]) == set(names) - {MANIFEST}
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": hashlib.sha256(data[name]).hexdigest(), "size": len(data[name])}
    assert not any(data[n][:1] == b"\x80" or data[n][:2] == b"PK" for n in names)  # no pickle, no torch zip
    assert b"store.root=" in data[configs[-1]]  # the overrides of the measure run that made it


def test_import_from_a_path_and_from_a_url_gives_back_the_same_store(zoo, server, tmp_path):
    out = genbench("import", str(zoo["archive"]), *TINY, f"store.root={tmp_path / 'a'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"imported {zoo['archive']} into {tmp_path / 'a'}: {TINY_MODELS} models, {TINY_MODELS * TINY_MEASURES} " \
           f"measurements, {TINY_MODELS * 6} early values, 3 run configs, 0 conflicts" in out.stdout
    _same_store(tmp_path / "a", zoo["source"])
    assert not (tmp_path / "a" / "cache").exists()
    restored = sorted((tmp_path / "a" / "hydra").glob("imported-*/*/.hydra/*.yaml"))
    originals = sorted((zoo["source"] / "hydra").glob("*/.hydra/*.yaml"))
    assert [p.read_bytes() for p in restored] == [p.read_bytes() for p in originals] and len(restored) == 3

    url = f"{server}/zoo.tar"
    out = genbench("import", *TINY, url, f"store.root={tmp_path / 'b'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    _same_store(tmp_path / "b", zoo["source"])
    assert _files(tmp_path / "b") == _files(tmp_path / "a")  # the same archive: the same files, configs included

    again = pipeline.import_archive(make_cfg(*TINY, f"store.root={tmp_path / 'b'}"), f"file://{zoo['archive']}")
    assert again == {"models": 0, "measurements": 0, "early": 0, "conflicts": 0, "configs": 0}


def test_a_gzip_archive_round_trips_and_evaluate_gives_the_same_leaderboard(zoo, tmp_path):
    counts = pipeline.export(make_cfg(*TINY, f"store.root={zoo['source']}", f"export.path={tmp_path}/zoo.tar.gz"))
    assert counts["models"] == TINY_MODELS and counts["path"] == str(tmp_path / "zoo.tar.gz")
    with open(tmp_path / "zoo.tar.gz", "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    pipeline.import_archive(make_cfg(*TINY, f"store.root={tmp_path / 'store'}"), str(tmp_path / "zoo.tar.gz"))
    _same_store(tmp_path / "store", zoo["source"])
    boards = {}
    shutil.copytree(zoo["source"], tmp_path / "copy")  # evaluate may keep a cache in its store: not in the shared one
    for name, root in (("source", tmp_path / "copy"), ("imported", tmp_path / "store")):
        cfg = make_cfg(*TINY, f"store.root={root}", f"leaderboard.dir={tmp_path / name}", "leaderboard.plots=false")
        pipeline.evaluate(cfg)
        boards[name] = {p.name: p.read_text() for p in sorted((tmp_path / name).glob("*.csv"))}
    assert boards["imported"] == boards["source"]
    assert {"smoke-digits.csv", "smoke-digits.early.csv"} <= set(boards["source"])  # the results, the early table
    assert len(boards["source"]["smoke-digits.csv"].splitlines()) > TINY_MEASURES


def test_import_into_a_store_holding_part_of_the_zoo_merges_like_collect(zoo, tmp_path):
    dest = tmp_path / "dest"
    shutil.copytree(zoo["source"], dest)
    store = Store(dest)
    kept, *gone = sorted(store.model_ids())
    for model_id in gone:
        store.delete_model(model_id)
    store.save_measurement(kept, "only_here", 1, 7.0, 0.0, "ok")
    counts = pipeline.import_archive(make_cfg(*TINY, f"store.root={dest}"), str(zoo["archive"]))
    assert counts == {"models": len(gone), "measurements": len(gone) * TINY_MEASURES, "early": len(gone) * 6,
                      "conflicts": 0, "configs": 3}
    rows = _rows(dest)
    assert [r for r in rows["measurements"] if r[1] == "only_here"][0][3] == 7.0
    rows["measurements"] = [r for r in rows["measurements"] if r[1] != "only_here"]
    assert rows == _rows(zoo["source"])

    long = store.measurements().set_index(["model_id", "measure"])
    version = int(long.loc[(kept, "params"), "version"])
    store.save_measurement(kept, "params", version, -1.0, 0.0, "ok")
    before = _contents(dest)
    out = genbench("import", str(zoo["archive"]), *TINY, f"store.root={dest}", cwd=tmp_path)
    _fails_in_one_line(out, "genbench import: 1 conflict", f"params v{version} of model {kept}: -1.0 (destination)",
                       "collect.on_conflict=keep")
    assert _contents(dest) == before
    with pytest.raises(MergeConflict):
        pipeline.import_archive(make_cfg(*TINY, f"store.root={dest}"), str(zoo["archive"]))
    pipeline.import_archive(make_cfg(*TINY, f"store.root={dest}", "collect.on_conflict=keep"), str(zoo["archive"]))
    assert Store(dest).measurements().set_index(["model_id", "measure"]).loc[(kept, "params"), "value"] == -1.0
    pipeline.import_archive(make_cfg(*TINY, f"store.root={dest}", "collect.on_conflict=replace"), str(zoo["archive"]))
    assert Store(dest).measurements().set_index(["model_id", "measure"]).loc[(kept, "params"), "value"] != -1.0


# ------------------------------------------------------------------------------------------ damaged archives
def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


def _write(path: Path, members, gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for info, data in members:
            info = tarfile.TarInfo(info) if isinstance(info, str) else info
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _with_manifest(members, change) -> list:
    manifest = json.loads(members[0][1])
    change(manifest)
    return [(members[0][0], json.dumps(manifest).encode()), *members[1:]]


def _bit_flip(archive: Path, out: Path) -> Path:
    data = bytearray(archive.read_bytes())
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".early.safetensors"))
    data[member.offset_data + member.size - 3] ^= 0x10  # a bit of a weight
    out.write_bytes(data)
    return out


def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _link(members) -> list:
    info = tarfile.TarInfo("index.sqlite")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return [members[0], (info, None), *members[2:]]


def _traversal(members) -> list:
    def add(manifest):
        manifest["files"]["../evil.yaml"] = {"sha256": "0" * 64, "size": 4}
    return [*_with_manifest(members, add), ("../evil.yaml", b"evil")]


CASES = {  # name: (make the archive from the good one's members (or bytes), words the line must hold)
    "bit flip": (lambda a, out: _bit_flip(a, out), "does not match its sha256 in the manifest"),
    "truncated": (lambda a, out: out.write_bytes(a.read_bytes()[: a.stat().st_size // 2]) and out, "truncated"),
    "truncated gzip": (lambda a, out: _cut(_write(out, _members(a), gz=True), 0.6), "truncated or damaged"),
    "missing member": (lambda a, out: _write(out, [m for m in _members(a) if not m[0].name.startswith("configs/")]),
                       "lacks 3 members its manifest lists"),
    "extra member": (lambda a, out: _write(out, [*_members(a), ("weights/ffff.safetensors", b"x")]),
                     "holds weights/ffff.safetensors, which its manifest does not list"),
    "foreign tar": (lambda a, out: _write(out, [("README", b"hello"), (MANIFEST, b"{}")]),
                    "is not a genbench archive (its first member is README"),
    "foreign manifest": (lambda a, out: _write(out, [(MANIFEST, b'{"format": "other"}')]),
                         "is not a genbench archive (its manifest.json is not of the format genbench-zoo)"),
    "not a tar": (lambda a, out: out.write_bytes(bytes(range(256)) * 64) and out,
                  "is not a genbench archive (not a tar file)"),
    "newer format": (lambda a, out: _write(out, _with_manifest(_members(a), lambda m: m.update(format_version=2)),
                                           gz=True), "is in archive format 2"),
    "newer schema": (lambda a, out: _write(out, _with_manifest(
        _members(a), lambda m: m.update(schema_version=SCHEMA_VERSION + 1))),
        f"holds a store of schema {SCHEMA_VERSION + 1}, newer than this genbench reads ({SCHEMA_VERSION})"),
    "wrong size": (lambda a, out: _write(out, _with_manifest(
        _members(a), lambda m: m["files"]["index.sqlite"].update(size=1))), "index.sqlite has"),
    "a link": (lambda a, out: _write(out, _link(_members(a))), "index.sqlite is not a regular file"),
    "path traversal": (lambda a, out: _write(out, _traversal(_members(a))),
                       "does not list the archive's members as genbench writes them"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_or_foreign_archive_is_one_line_and_leaves_the_store_as_it_was(zoo, tmp_path, case):
    make, words = CASES[case]
    bad = make(zoo["archive"], tmp_path / "bad.tar")
    dest = tmp_path / "dest"
    shutil.copytree(zoo["source"], dest)
    Store(dest).delete_model(sorted(Store(dest).model_ids())[0])  # a model the archive would add
    before = _files(dest)
    out = genbench("import", str(bad), *TINY, f"store.root={dest}", cwd=tmp_path)
    line = _fails_in_one_line(out, f"genbench import: {bad}", words)
    assert _files(dest) == before, line
    with pytest.raises(ArchiveError, match=re.escape(words)):
        pipeline.import_archive(make_cfg(*TINY, f"store.root={tmp_path / 'new'}"), str(bad))
    assert not (tmp_path / "new").exists()
    assert not (tmp_path / "evil.yaml").exists()


def test_sources_that_cannot_be_fetched_are_one_line(zoo, server, tmp_path):
    for source, words in ((f"{server}/nothing.tar", "the server answered 404"),
                          ("http://127.0.0.1:9/zoo.tar", "cannot fetch http://127.0.0.1:9/zoo.tar: ConnectionError"),
                          (str(tmp_path / "none.tar"), f"no archive at {tmp_path / 'none.tar'}"),
                          (str(tmp_path), "is a folder, not an archive"),
                          ("ftp://host/zoo.tar", "cannot fetch a ftp:// URL")):
        out = genbench("import", source, *TINY, f"store.root={tmp_path / 'new'}", cwd=tmp_path)
        _fails_in_one_line(out, "genbench import: ", words)
        assert not (tmp_path / "new").exists()
    out = genbench("import", *TINY, f"store.root={tmp_path / 'new'}", cwd=tmp_path)
    _fails_in_one_line(out, "give one archive to import")


def test_an_archive_of_an_older_store_schema_is_upgraded_before_it_is_merged(zoo, tmp_path):
    """An archive written when the store schema was 3 (no dataset.label_noise_mode in the hyperparameters): its
    store is migrated in the temporary folder, so the destination gets the current schema's rows."""
    members = _members(zoo["archive"])
    index = tmp_path / "index.sqlite"
    index.write_bytes(dict((m.name, d) for m, d in members)["index.sqlite"])
    with sqlite3.connect(index) as db:
        for model_id, hp in db.execute("SELECT id, hparams FROM models").fetchall():
            hp = json.loads(hp)
            del hp["dataset"]["label_noise_mode"]
            db.execute("UPDATE models SET hparams = ? WHERE id = ?", (json.dumps(hp), model_id))
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    db.close()
    data = index.read_bytes()

    def older(manifest):
        manifest["schema_version"] = 3
        manifest["files"]["index.sqlite"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    old = [(m, data if m.name == "index.sqlite" else d) for m, d in _with_manifest(members, older)]
    archive = _write(tmp_path / "old.tar", old)
    counts = pipeline.import_archive(make_cfg(*TINY, f"store.root={tmp_path / 'store'}"), str(archive))
    assert counts["models"] == TINY_MODELS and counts["conflicts"] == 0
    store = Store(tmp_path / "store", readonly=True)
    assert store.model_ids() == Store(zoo["source"], readonly=True).model_ids()
    assert {store.model_record(i)[0].dataset.label_noise_mode for i in store.model_ids()} == {"fixed_total"}
    assert _rows(tmp_path / "store")["measurements"] == _rows(zoo["source"])["measurements"]


def test_export_of_a_folder_without_a_store_is_one_line_and_writes_nothing(tmp_path):
    out = genbench("export", *TINY, f"store.root={tmp_path / 'none'}", f"export.path={tmp_path / 'z.tar'}",
                   cwd=tmp_path)
    _fails_in_one_line(out, "genbench export: no genbench store at")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_store_on_a_read_only_disk_exports_the_same_archive_contents(zoo, tmpfs, tmp_path):
    disk = tmpfs("ro", "16m")
    shutil.copytree(zoo["source"], disk / "store")
    for companion in (disk / "store").glob("genbench.sqlite-*"):
        companion.unlink()
    _read_only(disk)
    counts = archive.export(disk / "store", tmp_path / "zoo.tar")
    assert counts["models"] == TINY_MODELS
    got, want = _members(tmp_path / "zoo.tar"), _members(zoo["archive"])
    assert [m.name for m, _ in got] == [m.name for m, _ in want]
    for (m, d), (_, e) in zip(got[1:], want[1:]):  # all but the manifest, which says when it was written
        assert d == e, m.name
