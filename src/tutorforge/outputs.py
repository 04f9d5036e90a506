"""What tutorforge wrote where, and from what: the record beside every output directory.

    out = claim(Path("outputs/run/gguf"), "gguf", protect=[base_dir, adapter_dir])
    if out.reusable("export", inputs, "model.F16.gguf"): ...   # made from these same inputs, untouched
    out.begin("export", inputs)   # other inputs: what the stage wrote before is stale and removed
    out.add("export", path)       # finished files (written atomically under their final names)
    out.finish("export")

Each output directory (a merged checkpoint, a directory of GGUF files, a comparison report) holds
`tutorforge-output.json`: its kind, and per stage the content hashes of the stage's inputs, its
status and the size and modification time of every file it wrote. With it a command
- refuses to write into a directory that holds anything tutorforge did not put there as that kind
  (nothing of the user's is ever overwritten or deleted), and into the base model or adapter it
  reads from, or any directory that holds them or lies inside them;
- reuses a file only when it was made from the same inputs and is still as written, and deletes
  what it made from other inputs before making it anew (nothing stale survives a re-run).
Inputs are named by content (SHA-256), hashed once per file: `file_hash` keeps the hash of each file
it has read, found again by the file's device, inode, size and modification time, in tutorforge's
cache. An output directory that is not a training output_dir is locked there too (`lock_file`), so
that nothing is put into a directory before it is known to be tutorforge's to write.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tutorforge.errors import UserError
from tutorforge.fsutil import atomic_write, sha256_file

log = logging.getLogger(__name__)

RECORD = "tutorforge-output.json"
KINDS = {  # kind of output directory -> what it holds
    "merged": "a merged checkpoint (tutorforge merge)",
    "gguf": "GGUF files and their Modelfile (tutorforge export, tutorforge package)",
    "compare": "an A/B comparison report (tutorforge compare)",
}
LEGACY = {"tutorforge-merge.json": "merged", "export.json": "gguf"}  # records of earlier tutorforge versions
_hashes: dict[str, list] | None = None  # file_hash's cache: real path -> [file identity, SHA-256]


# --- content hashes -----------------------------------------------------------------------------

def _hash_cache_path() -> Path:
    from tutorforge.models import cache_root

    return cache_root() / "file-hashes.json"


def _read_hash_cache() -> dict[str, list]:
    try:
        return json.loads(_hash_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _hash(path: Path) -> tuple[str, bool]:
    """(the SHA-256 of a file's content, whether it had to be read now). A file is read once: its
    identity (device, inode, size, modification time) finds the hash later, and any change to the
    file alters it. One entry per file: a changed file's new hash replaces its old one."""
    global _hashes
    if _hashes is None:
        _hashes = _read_hash_cache()
    st = Path(path).stat()
    real, identity = os.path.realpath(path), f"{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}"
    known = _hashes.get(real)
    if isinstance(known, list) and known[0] == identity:
        return known[1], False
    if st.st_size > 1 << 30:
        log.info("hashing %s (%.1f GiB, once)", path, st.st_size / 2**30)
    _hashes[real] = [identity, sha256_file(path)]
    return _hashes[real][1], True


def _save_hashes() -> None:
    try:
        with atomic_write(_hash_cache_path()) as fh:
            json.dump(_hashes, fh)
    except OSError:  # a read-only cache only costs hashing again next time
        pass


def file_hash(path: Path) -> str:
    """The SHA-256 of a file's content, read once (see _hash)."""
    digest, new = _hash(path)
    if new:
        _save_hashes()
    return digest


def lock_file(out: Path) -> Path:
    """Where the lock of an output directory outside a training output_dir lives: in tutorforge's
    cache, named by the directory's real path (fsutil.exclusive takes it)."""
    from tutorforge.models import cache_root

    key = hashlib.sha256(os.path.realpath(out).encode()).hexdigest()[:16]
    return cache_root() / "locks" / f"{key}.lock"


def _is_own(name: str) -> bool:
    """tutorforge's own bookkeeping files: records, locks and temporary files of atomic writes."""
    return name in (RECORD, ".lock", *LEGACY) or (name.startswith(".") and name.endswith(".tmp"))


def directory_hashes(directory: Path, pattern: str = "*") -> dict[str, str]:
    """{file name: SHA-256} of the files of a model or adapter directory (links followed), without
    tutorforge's own bookkeeping files."""
    found = {p.name: _hash(p) for p in sorted(Path(directory).glob(pattern)) if p.is_file() and not _is_own(p.name)}
    if any(new for _, new in found.values()):
        _save_hashes()  # once for the directory, not once a file
    return {name: digest for name, (digest, _) in found.items()}


def model_identity(model_dir: Path, adapter: Path | None = None) -> str:
    """One hash naming the weights and tokenizer a checkpoint plus an optional LoRA adapter amount to
    (of an adapter: its adapter_* files and the tokenizer training saved beside them; of a full
    fine-tune's model/, every file in it: weights, config and the tokenizer it trained with). A merged
    checkpoint has the identity of the base + adapter it was merged from (its record says which),
    so a GGUF exported from either carries the same name."""
    merged = _merged_identity(Path(model_dir))
    if merged and adapter is None:  # the recorded identity itself, not a hash of it
        return merged
    parts = {"model": merged or directory_hashes(model_dir)}
    if adapter is not None:  # its weights and config, and the tokenizer training saved beside them
        from tutorforge.tokenizer import SAVED_TOKENIZER_FILES

        parts["adapter"] = {name: digest for name, digest in directory_hashes(adapter).items()
                            if name.startswith("adapter_") or name in SAVED_TOKENIZER_FILES}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _merged_identity(model_dir: Path) -> str | None:
    """The recorded identity of a complete, untouched tutorforge merge, else None."""
    record = read_record(model_dir)
    stage = (record or {}).get("stages", {}).get("merge")
    if record is None or record.get("kind") != "merged" or not stage or stage.get("status") != "complete":
        return None
    return stage["inputs"]["model"] if _intact(model_dir, stage) else None


def rows_hash(rows: Iterable) -> str:
    """The hash of a list of dataset rows (instruction, input, output)."""
    items = [[r.instruction, r.input, r.output] for r in rows]
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


# --- the record of an output directory ----------------------------------------------------------

def read_record(directory: Path) -> dict | None:
    try:
        record = json.loads((Path(directory) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("stages"), dict) else None


def _intact(directory: Path, stage: dict) -> bool:
    """Every file the stage recorded is there, as written (same size and modification time)."""
    for name, meta in stage.get("files", {}).items():
        path = Path(directory) / name
        try:
            st = path.stat()
        except OSError:
            return False
        if st.st_size != meta["size"] or st.st_mtime_ns != meta["mtime_ns"]:
            return False
    return True


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _check_not_protected(out: Path, protect: Iterable[Path | None], option: str = "--out") -> None:
    """Refuse an output that is, holds or lies inside a protected directory (the inputs)."""
    target = Path(os.path.realpath(out))
    for guarded in protect:
        if guarded is None or not os.path.exists(guarded):  # a hub id or bundled name reads nothing here
            continue
        real = Path(os.path.realpath(guarded))
        if _inside(target, real) or _inside(real, target):
            how = "is" if target == real else "lies inside" if _inside(target, real) else "holds"
            raise UserError(f"{option} {out}: {how} {guarded}, which this command reads from; tutorforge "
                            "never writes there. Choose an output directory of its own")


@dataclass
class OutputDir:
    """An output directory of one kind, claimed for writing (see claim)."""

    path: Path
    kind: str
    record: dict = field(default_factory=dict)

    def stage(self, name: str) -> dict:
        return self.record["stages"].get(name) or {}

    def reusable(self, stage: str, inputs: dict, name: str | None = None) -> bool:
        """True when `stage` ran on these same inputs and its files (or the one named) are as
        written; an interrupted stage's finished files count too."""
        entry = self.stage(stage)
        if entry.get("inputs") != _canonical(inputs):
            return False
        if name is not None:
            return name in entry.get("files", {}) and _intact(self.path, {"files": {name: entry["files"][name]}})
        return entry.get("status") == "complete" and _intact(self.path, entry)

    def begin(self, stage: str, inputs: dict, *, invalidates: tuple[str, ...] = ()) -> None:
        """Start `stage` on `inputs`. When they differ from the recorded ones, every file the stage
        (and the stages it invalidates) wrote is stale: it is deleted before anything is written."""
        inputs = _canonical(inputs)
        entry = self.stage(stage)
        if entry and entry.get("inputs") != inputs:
            for name in (stage, *invalidates):
                self.remove(name)
            entry = {}
        self.record["stages"][stage] = {"inputs": inputs, "status": "running", "files": entry.get("files", {})}
        self.save()

    def remove(self, stage: str, why: str = "made from other inputs") -> None:
        """Delete what `stage` wrote here (files tutorforge recorded as its own) and its record."""
        entry = self.record["stages"].pop(stage, None) or {}
        for name in entry.get("files", {}):
            target = self.path / name
            if target.is_file() or target.is_symlink():
                target.unlink()
                log.info("%s: removed %s (%s)", stage, target, why)
        self.save()

    def add(self, stage: str, *paths: Path) -> None:
        """Record finished files of `stage` (name, size and modification time of each)."""
        files = self.record["stages"][stage].setdefault("files", {})
        for path in paths:
            st = Path(path).stat()
            files[Path(path).name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        self.save()

    def finish(self, stage: str, **extra) -> None:
        self.record["stages"][stage].update(status="complete", **extra)
        self.save()

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path / RECORD) as fh:
            json.dump(self.record, fh, indent=1)


def _canonical(inputs: dict) -> dict:
    """`inputs` as the record holds them (tuples become lists, paths strings)."""
    return json.loads(json.dumps(inputs, default=str, sort_keys=True))


def _foreign_entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not _is_own(p.name))


def claim(out: Path, kind: str, *, protect: Iterable[Path | None] = (), option: str = "--out",
          create: bool = True) -> OutputDir:
    """`out` as an output directory of `kind`, created (unless not `create`: one built elsewhere and
    renamed into place) if absent. Refused, with what to do: a file; a directory that holds anything
    but tutorforge's own `kind` output; and (never allowed) one that is, holds or lies inside a
    protected directory."""
    out = Path(out)
    _check_not_protected(out, protect, option)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out}: is a file, not a directory; give a directory for the outputs")
    record = read_record(out) if out.is_dir() else None
    legacy = next((LEGACY[n] for n in LEGACY if (out / n).is_file()), None) if out.is_dir() else None
    found = record.get("kind") if record else legacy
    if found is not None and found != kind:
        raise UserError(f"{option} {out}: holds {KINDS.get(found, found)}, not {KINDS[kind]}; give "
                        "another directory")
    if found is None and out.is_dir() and (foreign := _foreign_entries(out)):
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{option} {out}: not empty ({shown}) and not written by tutorforge; tutorforge "
                        "never overwrites or deletes what it did not make. Give a new or empty directory, "
                        "or move those files away yourself")
    claimed = OutputDir(out, kind, record or {"kind": kind, "stages": {}})
    if record is None and (create or out.is_dir()):
        claimed.save()  # marked as tutorforge's from the start, so an interrupted stage can resume here
    return claimed


def replace_dir(tmp: Path, out: Path) -> None:
    """Put a complete directory built at `tmp` in the place of `out` (which claim() has vouched
    for: absent, empty, or tutorforge's own output of that kind)."""
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
