"""The results store: one atomic JSON record per run, claims, an event log, the tidy table.

Layout of a results folder::

    records/<run_id>.json        one per finished run (status ok or failed), written atomically
    records/corrupt/             unreadable record files moved aside (the run is redone)
    diagnostics/<run_id>.pt      per-sample scores with the poison mask, checkpoints, logs
    claims/<run_id>.lock         flock'ed while a run is executing (released when its process dies)
    cells/<cell_id>.failed       the backdoor training of a cell failed in a session
    events.jsonl                 started / finished / failed / skipped events, one JSON line each
    runs.parquet, runs.csv       the tidy table consolidated from the records

**Atomicity.** Every file is written to a temporary name in the same folder and renamed over the
target (``os.replace``), so a reader (or a run killed with SIGKILL) sees the old file or the new
one, never half of one. Diagnostics are written before the record, so a record implies them.

**Claims.** Before a run executes, its worker takes an exclusive, non-blocking ``flock`` on
``claims/<run_id>.lock`` and re-checks the record under it. A second scheduler on the same folder
fails to take the lock and skips the run; a process that dies (even by SIGKILL) releases its locks,
so no claim ever goes stale. The lock files stay empty and may be deleted at any time when no
scheduler runs. ``flock`` works across processes of a machine and on most network file systems
(NFS v4 maps it to POSIX locks); the folder must be shared by all workers of a cluster.

**Corruption.** A record that does not parse, lacks the fields a record has, or names another run
is *corrupt*: it is moved to ``records/corrupt/`` with a warning and the run counts as not done.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Iterator

from bench.files import atomic_torch_save, atomic_write_bytes, atomic_write_text, exclusive_lock
from bench.record import COLUMNS, FLOAT_COLUMNS, INT_COLUMNS, REQUIRED_FIELDS, dumps_record, flatten

class CorruptRecordError(ValueError):
    """A record file that cannot be trusted."""


class Claim:
    """A held claim on a run (an open, flock'ed file); release() or process death frees it."""

    def __init__(self, fh):
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# -- the store ------------------------------------------------------------------------------------
class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.records = self.root / "records"
        self.diagnostics = self.root / "diagnostics"
        self.claims = self.root / "claims"
        self.cells = self.root / "cells"
        self.events = self.root / "events.jsonl"

    def ensure(self) -> "Store":
        for d in (self.records, self.diagnostics, self.claims, self.cells):
            d.mkdir(parents=True, exist_ok=True)
        return self

    # paths
    def record_path(self, run_id: str) -> Path:
        return self.records / f"{run_id}.json"

    def diagnostics_path(self, run_id: str) -> Path:
        return self.diagnostics / f"{run_id}.pt"

    # -- records ----------------------------------------------------------------------------------
    def read(self, run_id: str) -> dict | None:
        """The record of a run, None if there is none; a corrupt file is moved aside (None)."""
        path = self.record_path(run_id)
        try:
            return self._parse(path, run_id)
        except FileNotFoundError:
            return None
        except CorruptRecordError as exc:
            self._quarantine(path, str(exc))
            return None

    @staticmethod
    def _parse(path: Path, run_id: str | None = None) -> dict:
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise
        except (OSError, UnicodeDecodeError) as exc:
            raise CorruptRecordError(f"unreadable: {exc}") from exc
        try:
            rec = json.loads(text)
        except ValueError as exc:
            raise CorruptRecordError(f"not valid JSON: {exc}") from exc
        if not isinstance(rec, dict):
            raise CorruptRecordError("not a JSON object")
        missing = [k for k in REQUIRED_FIELDS if k not in rec]
        if missing:
            raise CorruptRecordError(f"missing fields {missing}")
        if rec.get("status") not in ("ok", "failed"):
            raise CorruptRecordError(f"unknown status {rec.get('status')!r}")
        if run_id is not None and rec["run_id"] != run_id:
            raise CorruptRecordError(f"names run {rec['run_id']}, not {run_id}")
        if rec["status"] == "ok" and any(k not in rec for k in ("acc", "asr")):
            raise CorruptRecordError("an ok record without acc/asr")
        return rec

    def _quarantine(self, path: Path, why: str) -> None:
        dest = self.records / "corrupt" / f"{path.stem}.{int(time.time() * 1000)}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            return
        warnings.warn(f"corrupt record {path.name} ({why}) moved to {dest}; the run will be redone",
                      stacklevel=3)
        self.log_event("corrupt", run_id=path.stem, why=why, moved_to=str(dest))

    def status(self, run_id: str) -> str | None:
        rec = self.read(run_id)
        return None if rec is None else rec["status"]

    def write(self, record: dict, diagnostics: dict | None = None) -> Path:
        """Write a run's diagnostics (if any) then its record, both atomically."""
        run_id = record["run_id"]
        if diagnostics is not None:
            atomic_torch_save(diagnostics, self.diagnostics_path(run_id))
        record = dict(record, finished_at=record.get("finished_at") or time.time())
        path = self.record_path(run_id)
        atomic_write_text(path, dumps_record(record))
        return path

    def iter_records(self) -> Iterator[dict]:
        """Every valid record (corrupt ones are moved aside)."""
        if not self.records.exists():
            return
        for path in sorted(self.records.glob("*.json")):
            try:
                yield self._parse(path, path.stem)
            except FileNotFoundError:
                continue
            except CorruptRecordError as exc:
                self._quarantine(path, str(exc))

    def statuses(self) -> dict[str, str]:
        """run_id -> status of every valid record."""
        return {r["run_id"]: r["status"] for r in self.iter_records()}

    # -- claims -----------------------------------------------------------------------------------
    def try_claim(self, run_id: str) -> Claim | None:
        """Take the run's claim without waiting; None if another process holds it."""
        self.claims.mkdir(parents=True, exist_ok=True)
        fh = open(self.claims / f"{run_id}.lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        return Claim(fh)

    def is_claimed(self, run_id: str) -> bool:
        path = self.claims / f"{run_id}.lock"
        if not path.exists():
            return False
        c = self.try_claim(run_id)
        if c is None:
            return True
        c.release()
        return False

    # -- cells ------------------------------------------------------------------------------------
    def mark_cell_failed(self, cell_id: str, error: str) -> None:
        atomic_write_text(self.cells / f"{cell_id}.failed", json.dumps({"error": error, "time": time.time()}))

    def cell_failure(self, cell_id: str, since: float) -> str | None:
        """The error of the cell's backdoor training if it failed at or after ``since``."""
        path = self.cells / f"{cell_id}.failed"
        try:
            blob = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return blob.get("error") if blob.get("time", 0) >= since else None

    def clear_cell_failure(self, cell_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.cells / f"{cell_id}.failed").unlink()

    # -- events -----------------------------------------------------------------------------------
    def log_event(self, event: str, **fields) -> None:
        """Append one JSON line (a single O_APPEND write, so concurrent writers do not interleave)."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": event, "time": time.time(), "host": socket.gethostname(),
                           "pid": os.getpid(), **fields}, default=str) + "\n"
        fd = os.open(self.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def read_events(self) -> list[dict]:
        if not self.events.exists():
            return []
        out = []
        for line in self.events.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    # -- the tidy table ---------------------------------------------------------------------------
    def table(self):
        """A pandas DataFrame with one row per valid record (columns :data:`COLUMNS` first)."""
        import pandas as pd

        rows = [flatten(r) for r in self.iter_records()]
        df = pd.DataFrame(rows)
        for c in COLUMNS:
            if c not in df.columns:
                df[c] = None
        rest = [c for c in df.columns if c not in COLUMNS]
        df = df[COLUMNS + rest]
        for c in FLOAT_COLUMNS:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
        for c in INT_COLUMNS:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
        for c in df.columns:
            if df[c].dtype == object:
                df[c] = df[c].map(lambda v: None if v is None else (v if isinstance(v, str) else
                                                                    json.dumps(v, sort_keys=True, default=str)))
        return df.sort_values(["suite", "dataset", "model", "attack", "poison_ratio", "seed", "defense",
                               "run_id"], na_position="last", kind="stable").reset_index(drop=True)

    def consolidate(self) -> tuple[Path, Path]:
        """Rebuild ``runs.parquet`` and ``runs.csv`` from the records (atomically)."""
        import io

        with exclusive_lock(self.root / ".consolidate.lock"):
            df = self.table()
            pq, csv = self.root / "runs.parquet", self.root / "runs.csv"
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            atomic_write_bytes(pq, buf.getvalue())
            atomic_write_text(csv, df.to_csv(index=False))
        return pq, csv

