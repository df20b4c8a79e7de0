"""Zoo archives: a trained and measured store as one verified file (``genbench export`` / ``genbench import``).

An archive is a tar file (gzip-compressed when its name ends in ``.gz`` or ``.tgz``) whose members are, in
this order::

    manifest.json                      format, versions, counts, and the sha256 and size of every other member
    index.sqlite                       a consistent copy of the store's SQLite file (models, measurements, early)
    weights/<id>.safetensors           a model's initial and final weights (tensors "init/<name>", "final/<name>")
    weights/<id>.early.safetensors     the weights kept part-way through training, if the store has them
    configs/<run>/<name>.yaml          the Hydra configs of the runs that made the store (``hydra/**/.hydra/``)

Nothing in it is a pickle: weights are safetensors, the index is SQLite, the rest JSON and YAML. Importing
verifies every member before anything reaches the destination: the first member must be the manifest of
this format, every other member must be a regular file the manifest lists (no links, no other names, no
path outside the archive's folders), and each one's size and sha256 must match. Only then is a complete store
rebuilt in a temporary folder, in the store's own format, and merged into the destination exactly as
``genbench collect`` merges a source (:func:`benchmark.store.merge.merge`, the same ``on_conflict`` rules).
A damaged, truncated, incomplete or foreign archive is one ``ArchiveError`` line, and the destination is
left as it was (not even created).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
import urllib.parse
import zlib
from pathlib import Path

from benchmark.errors import UserError
from benchmark.files import write_atomic
from benchmark.store.db import MIGRATABLE, SCHEMA_VERSION, Store, StoreError, connect, schema_version
from benchmark.store.merge import ON_CONFLICT, check_merge, merge

log = logging.getLogger("genbench")

FORMAT, FORMAT_VERSION = "genbench-zoo", 1
MANIFEST, INDEX = "manifest.json", "index.sqlite"
_ID = r"[A-Za-z0-9_-]+"
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.=+,-]*"
MEMBER = re.compile(rf"{INDEX}|weights/{_ID}(\.early)?\.safetensors|configs/(?:{_PART}/)+{_PART}\.yaml")
_CHUNK = 1 << 20


class ArchiveError(UserError):
    """An archive that cannot be imported: not a tar file, not a genbench archive, damaged, truncated, of a
    newer format or store schema."""


def genbench_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("genbench")
    except PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------------- export
def export(root: str | os.PathLike, path: str | os.PathLike) -> dict:
    """Write the store under ``root`` as one archive at ``path`` (atomically: a reader sees no half-written
    archive). The store is only read: a copy of its index is taken with SQLite's backup API (a consistent
    snapshot, the write-ahead log folded in), and the weights of exactly the models in that copy are written.
    Returns the manifest's ``counts`` with the archive's ``path`` and ``bytes``."""
    store, path = Store(root, readonly=True), Path(path)
    if path.exists() and path.is_dir():
        raise ArchiveError(f"export.path={path} is a folder; give the archive's file name (e.g. {path}/zoo.tar)")
    with tempfile.TemporaryDirectory(prefix="genbench-export-") as tmp:
        stage = Path(tmp)
        files: dict[str, dict] = {}
        _backup(store.path, stage / INDEX)
        files[INDEX] = {"sha256": _sha256_file(stage / INDEX), "size": (stage / INDEX).stat().st_size}
        with sqlite3.connect(stage / INDEX) as db:
            ids = [r[0] for r in db.execute("SELECT id FROM models ORDER BY id")]
            counts = {"models": len(ids), **{t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                                             for t in ("measurements", "early")}}
        db.close()
        for model_id in ids:
            if not re.fullmatch(_ID, model_id):
                raise ArchiveError(f"model id {model_id!r} in {store.path} is not a genbench id; cannot export it")
            init, final = store.load_states(model_id)
            _stage(stage, files, f"weights/{model_id}.safetensors", _weights({"init": init, "final": final}))
            snapshots = store.load_snapshots(model_id)
            if snapshots:
                states = {str(i): s["state"] for i, s in enumerate(snapshots)}
                meta = {"fractions": [s["fraction"] for s in snapshots], "epochs": [s["epoch"] for s in snapshots]}
                _stage(stage, files, f"weights/{model_id}.early.safetensors", _weights(states, meta))
        configs = _configs(store.root)
        for name, source in configs.items():
            _stage(stage, files, name, source.read_bytes())
        counts["configs"] = len(configs)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "genbench_version": genbench_version(),
                    "schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "counts": counts, "files": files}
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda out: _write_tar(out, stage, [MANIFEST, *files], _gzip(path)))
    return {**counts, "path": str(path), "bytes": path.stat().st_size}


def _backup(source: Path, target: Path) -> None:
    """A consistent copy of the store file ``source`` as one file (no write-ahead log beside it), read as
    ``Store(readonly=True)`` reads it: on a read-only disk too."""
    dst = sqlite3.connect(target)
    try:
        with connect(source, readonly=True) as src:
            src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()


def _weights(groups: dict[str, dict], meta: dict | None = None) -> bytes:
    """State dicts as one safetensors file: tensor ``<group>/<name>``, and each group's names in their order in
    the metadata, so that loading gives back the very same state dicts (names, order, dtypes, shapes, bits)."""
    from safetensors.torch import save
    tensors = {f"{g}/{name}": t.detach().contiguous().clone() for g, state in groups.items()
               for name, t in state.items()}
    order = {g: list(state) for g, state in groups.items()}
    # one metadata key: safetensors writes several in an order that changes from process to process
    return save(tensors, metadata={"genbench": json.dumps({"order": order, "meta": meta or {}})})


def _stage(stage: Path, files: dict, name: str, data: bytes) -> None:
    target = stage / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _configs(root: Path) -> dict[str, Path]:
    """The Hydra configs of the runs under ``root/hydra`` (``<run>/.hydra/<name>.yaml``), by member name."""
    found = {}
    for path in sorted((root / "hydra").glob("**/.hydra/*.yaml")):
        run = path.parent.parent.relative_to(root / "hydra")
        name = f"configs/{run.as_posix()}/{path.name}"
        if MEMBER.fullmatch(name) and path.is_file() and not path.is_symlink():
            found[name] = path
        else:
            log.warning("export: leaving out %s (its name is not one an archive may hold)", path)
    return found


def _gzip(path: Path) -> bool:
    return path.name.endswith((".gz", ".tgz"))


def _write_tar(out: Path, stage: Path, names: list[str], gz: bool) -> None:
    with tarfile.open(out, "w:gz" if gz else "w", format=tarfile.PAX_FORMAT,
                      **({"compresslevel": 6} if gz else {})) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = (stage / name).stat().st_size, 0o644, int(time.time())
            with open(stage / name, "rb") as f:
                tar.addfile(info, f)


# ------------------------------------------------------------------------------------------------- import
def import_archive(source: str, root: str | os.PathLike, on_conflict: str = "fail") -> dict:
    """Fetch the archive ``source`` (a path, a ``file://`` URL or an ``http(s)://`` URL), verify every member,
    rebuild its store in a temporary folder and merge it into the store under ``root`` as ``genbench collect``
    does. Returns the merge's counts, plus ``configs`` (the run configs restored under
    ``root/hydra/imported-<manifest sha256[:12]>/``)."""
    if on_conflict not in ON_CONFLICT:
        raise StoreError(f"collect.on_conflict={on_conflict} is not a rule; valid: {', '.join(ON_CONFLICT)}")
    with tempfile.TemporaryDirectory(prefix="genbench-import-") as tmp:
        tmp = Path(tmp)
        path = fetch(source, tmp / "download")
        manifest = verify(path, tmp / "members", source)
        rebuilt = rebuild(tmp / "members", manifest, tmp / "store", source)
        dest = Store(root)
        if on_conflict == "fail":
            check_merge(dest, [rebuilt])
        counts = merge(dest, rebuilt, on_conflict)
        digest = hashlib.sha256((tmp / "members" / MANIFEST).read_bytes()).hexdigest()[:12]
        counts["configs"] = _restore_configs(tmp / "members", manifest, dest.root / "hydra" / f"imported-{digest}")
    return counts


def fetch(source: str, folder: Path) -> Path:
    """The archive ``source`` as a local file: an ``http(s)://`` URL is downloaded into ``folder`` (streamed,
    with timeouts); a ``file://`` URL or a path is read where it is."""
    url = urllib.parse.urlparse(source)
    if url.scheme in ("http", "https"):
        return _download(source, folder)
    if url.scheme == "file":
        path = Path(urllib.parse.unquote(url.path))
    elif len(url.scheme) > 1:
        raise ArchiveError(f"{source}: cannot fetch a {url.scheme}:// URL; give a path, a file://, http:// or "
                           f"https:// URL")
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise ArchiveError(f"no archive at {path}")
    if path.is_dir():
        raise ArchiveError(f"{path} is a folder, not an archive (to merge a store folder, use genbench collect "
                           f"collect.sources=[{path}])")
    return path


def _download(url: str, folder: Path) -> Path:
    import requests
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "archive"
    try:
        with requests.get(url, stream=True, timeout=(10, 60)) as answer:
            if answer.status_code != 200:
                raise ArchiveError(f"cannot fetch {url}: the server answered {answer.status_code} {answer.reason}")
            with open(target, "wb") as f:
                for chunk in answer.iter_content(_CHUNK):
                    f.write(chunk)
    except requests.RequestException as err:
        raise ArchiveError(f"cannot fetch {url}: {type(err).__name__}: {_first_line(err)}") from None
    return target


def _why(err: BaseException) -> str:
    """What tarfile says, unless it is its list of every compression it tried."""
    text = _first_line(err)
    return "" if "could not be opened successfully" in text else f": {text}"


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def verify(path: Path, folder: Path, source: str | None = None) -> dict:
    """Check the archive at ``path`` member by member and extract each into ``folder`` (never following a
    name outside it); returns its manifest. Raises ``ArchiveError`` naming what is wrong: not a tar file,
    no manifest first, a foreign format, a newer format or schema, a member that is not a regular file or
    that the manifest does not list, a size or sha256 that differs, a member missing, a truncated file."""
    where = source or str(path)
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        if isinstance(err, OSError) and not isinstance(err, EOFError) and err.errno is not None:
            raise
        raise ArchiveError(f"{where} is not a genbench archive (not a tar file{_why(err)})") from None
    manifest, seen = None, set()
    folder.mkdir(parents=True, exist_ok=True)
    with tar:
        try:
            for member in tar:
                if manifest is None:
                    manifest = _read_manifest(tar, member, where, folder / MANIFEST)
                    seen.add(MANIFEST)
                    continue
                name = member.name
                expected = manifest["files"].get(name)
                if name in seen:
                    raise ArchiveError(f"{where} holds {name} twice; an archive holds each member once")
                if expected is None:
                    raise ArchiveError(f"{where} holds {name}, which its manifest does not list (not an archive "
                                       f"genbench wrote, or altered since)")
                if not member.isreg():
                    raise ArchiveError(f"{where}: its member {name} is not a regular file (a link or folder); "
                                       f"refusing it")
                if member.size != expected["size"]:
                    raise ArchiveError(f"{where}: {name} has {member.size} bytes, its manifest says "
                                       f"{expected['size']}; the archive is damaged")
                digest = _extract(tar, member, folder / name)
                if digest != expected["sha256"]:
                    raise ArchiveError(f"{where}: {name} does not match its sha256 in the manifest "
                                       f"({digest[:12]} vs {expected['sha256'][:12]}); the archive is damaged")
                seen.add(name)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            if isinstance(err, OSError) and err.errno is not None:  # a fault of the disk, not of the archive
                raise
            raise ArchiveError(f"{where} is truncated or damaged ({_first_line(err)})") from None
    if manifest is None:
        raise ArchiveError(f"{where} is an empty tar file, not a genbench archive")
    missing = sorted(set(manifest["files"]) - seen)
    if missing:
        raise ArchiveError(f"{where} lacks {len(missing)} member{'s' if len(missing) != 1 else ''} its manifest "
                           f"lists ({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}): the archive is "
                           f"truncated or incomplete")
    return manifest


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo, where: str, target: Path) -> dict:
    """The first member, checked to be this format's manifest (and a version this genbench reads), and kept as
    ``target``."""
    if member.name != MANIFEST or not member.isreg() or member.size > 64 << 20:
        raise ArchiveError(f"{where} is not a genbench archive (its first member is {member.name}, not "
                           f"{MANIFEST})")
    data = tar.extractfile(member).read()
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArchiveError(f"{where}: its {MANIFEST} is not valid JSON ({err}); the archive is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"{where} is not a genbench archive (its {MANIFEST} is not of the format {FORMAT})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ArchiveError(f"{where} is in archive format {version} (written by genbench "
                           f"{manifest.get('genbench_version')}); this genbench reads format {FORMAT_VERSION}: "
                           f"upgrade genbench")
    schema = manifest.get("schema_version")
    if not isinstance(schema, int) or (schema != SCHEMA_VERSION and schema not in MIGRATABLE):
        newer = isinstance(schema, int) and schema > SCHEMA_VERSION
        raise ArchiveError(f"{where} holds a store of schema {schema}{', newer than' if newer else ', which'} this "
                           f"genbench{' reads' if newer else ' cannot read'} ({SCHEMA_VERSION}); "
                           f"{'upgrade genbench' if newer else 'use the genbench that wrote it'}")
    files = manifest.get("files")
    if not isinstance(files, dict) or INDEX not in files or not all(
            isinstance(n, str) and MEMBER.fullmatch(n) and isinstance(f, dict)
            and isinstance(f.get("size"), int) and isinstance(f.get("sha256"), str) for n, f in files.items()):
        raise ArchiveError(f"{where}: its {MANIFEST} does not list the archive's members as genbench writes them")
    target.write_bytes(data)
    return manifest


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> str:
    """Copy a member's bytes to ``target``; returns their sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    h, source = hashlib.sha256(), tar.extractfile(member)
    with open(target, "wb") as out:
        for block in iter(lambda: source.read(_CHUNK), b""):
            h.update(block)
            out.write(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ rebuild
def rebuild(members: Path, manifest: dict, root: Path, source: str) -> Store:
    """A store under ``root`` (a new folder) from verified members: the index as its SQLite file, each model's
    weights as its checkpoint files in the store's own format (byte for byte what ``Store.save_model`` writes).
    An index and weights that do not name the same models are an ``ArchiveError``."""
    root.mkdir(parents=True)
    (root / "checkpoints").mkdir()
    db_path = root / "genbench.sqlite"
    shutil.copyfile(members / INDEX, db_path)
    try:
        version = schema_version(db_path)
    except StoreError as err:
        raise ArchiveError(f"{source}: its {INDEX} is not a genbench store ({_first_line(err)})") from None
    if version != manifest["schema_version"]:
        raise ArchiveError(f"{source}: its {INDEX} has store schema {version}, its manifest says "
                           f"{manifest['schema_version']}; the archive is inconsistent")
    with sqlite3.connect(db_path) as db:
        ids = {r[0] for r in db.execute("SELECT id FROM models")}
        db.execute("UPDATE models SET checkpoint = 'checkpoints/' || id || '.pt'")
    db.close()
    weights = {n.removeprefix("weights/").removesuffix(".safetensors") for n in manifest["files"]
               if n.startswith("weights/")}
    finals = {w for w in weights if not w.endswith(".early")}
    if ids != finals or not {w.removesuffix(".early") for w in weights} <= ids:
        odd = sorted((ids ^ finals) | ({w.removesuffix(".early") for w in weights} - ids))
        raise ArchiveError(f"{source}: its index and its weights do not name the same models (e.g. {odd[0]}); the "
                           f"archive is inconsistent")
    for model_id in sorted(ids):
        groups, _ = _load(members / f"weights/{model_id}.safetensors", {"init", "final"}, source)
        _write_torch(root / "checkpoints" / f"{model_id}.pt", {"init": groups["init"], "final": groups["final"]})
        early = members / f"weights/{model_id}.early.safetensors"
        if early.exists():
            groups, meta = _load(early, None, source)
            states = [groups[str(i)] for i in range(len(groups))]
            if not (len(meta.get("fractions", ())) == len(meta.get("epochs", ())) == len(states)):
                raise ArchiveError(f"{source}: {early.name} does not hold one state per early fraction")
            _write_torch(root / "checkpoints" / f"{model_id}.early.pt",
                         {"fractions": meta["fractions"], "epochs": meta["epochs"], "states": states})
    if version != SCHEMA_VERSION:  # an archive of an older genbench: upgraded here, before it is merged
        from benchmark.store.migrate import migrate
        migrate(root)
    return Store(root, readonly=True)


def _write_torch(path: Path, obj) -> None:
    """``torch.save(obj)`` as ``Store.save_model`` writes it (through memory), so that the same weights give the
    same bytes and a model the destination already holds is not a conflict."""
    import torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.write_bytes(buffer.getbuffer())


def _load(path: Path, groups: set[str] | None, source: str) -> tuple[dict[str, dict], dict]:
    """The state dicts of a weights file, by group, in their stored order; and its metadata."""
    from safetensors.torch import load
    try:
        with open(path, "rb") as f:
            tensors = load(f.read())
        header = json.loads(_header(path)["genbench"])
        order, meta = header["order"], header["meta"]
        out = {g: {name: tensors.pop(f"{g}/{name}") for name in names} for g, names in order.items()}
    except Exception as err:  # safetensors raises its own types for a malformed file
        raise ArchiveError(f"{source}: {path.name} is not a genbench weights file ({type(err).__name__}: "
                           f"{_first_line(err)})") from None
    if tensors or (groups is not None and set(out) != groups) or (groups is None and set(out) != {
            str(i) for i in range(len(out))}):
        raise ArchiveError(f"{source}: {path.name} holds other tensors than a genbench checkpoint")
    return out, meta


def _header(path: Path) -> dict:
    """A safetensors file's ``__metadata__``."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))["__metadata__"]


def _restore_configs(members: Path, manifest: dict, folder: Path) -> int:
    """Write the archive's run configs under ``folder/<run>/.hydra/`` (those already there are left). Returns
    how many were written."""
    written = 0
    for name in sorted(n for n in manifest["files"] if n.startswith("configs/")):
        run, _, file = name.removeprefix("configs/").rpartition("/")
        target = folder / run / ".hydra" / file
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        data = (members / name).read_bytes()
        write_atomic(target, lambda tmp, data=data: tmp.write_bytes(data))
        written += 1
    return written


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()

