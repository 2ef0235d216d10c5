"""A run's MLflow records kept on disk while the tracking server is unreachable.

One directory per MLflow run under the spool root ($GENBENCH_SPOOL, default
~/.cache/genbench/spool), on the machine of the process that logs (rank 0's node for a
training run's metrics, the driver's for its tags and status):

    <root>/<run_id>/meta.json       {"run_id", "tracking_uri"}: where the records belong
    <root>/<run_id>/records.jsonl   one record a line, in the order they were logged
    <root>/<run_id>/blobs/<n>       an artifact's bytes (written before its record's line)
    <root>/<run_id>/sent            how many records are stored in MLflow already
    <root>/<run_id>/owner.lock      flock of the process sending them (a logger, or a replay)

Records: {"metrics": [[key, value, timestamp_ms, step], ...]}, {"file": artifact path,
"blob": name}, {"tags": {key: value}}, {"status": "FINISHED" | "FAILED" | "KILLED"}.
Sending one twice is harmless (MLflow keeps one copy of an identical metric point, and an
artifact or tag written twice is the same), so a sender that dies between sending a record
and counting it loses nothing. No MLflow here: pipeline/tracking.py sends the records.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path

SPOOL_ENV = "GENBENCH_SPOOL"
RECORDS, SENT, META, BLOBS, LOCK = "records.jsonl", "sent", "meta.json", "blobs", "owner.lock"


def root() -> Path:
    return Path(os.environ.get(SPOOL_ENV) or Path.home() / ".cache" / "genbench" / "spool")


def run_dir(run_id: str, spool_root: str | Path | None = None) -> Path:
    return Path(spool_root or root()) / run_id


def replay_command(directory: Path) -> str:
    return f"genbench tracking replay {directory}"


class Spool:
    """Appends are one write() of one line on a file opened O_APPEND (whole lines, in order,
    from any number of processes); sending is for the one process that holds owner.lock."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self._lock_fd: int | None = None

    @classmethod
    def create(cls, run_id: str, tracking_uri: str, spool_root: str | Path | None = None,
               name: str | None = None) -> "Spool":
        """The run's spool directory (or the one called `name`), made if missing."""
        spool = cls(run_dir(name or run_id, spool_root))
        spool.dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the user's records only
        (spool.dir / BLOBS).mkdir(mode=0o700, parents=True, exist_ok=True)
        meta = spool.dir / META
        if not meta.exists():
            _atomic_write(meta, json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}))
        return spool

    @staticmethod
    def is_spool(directory: str | Path) -> bool:
        return (Path(directory) / META).is_file()

    def meta(self) -> dict:
        return json.loads((self.dir / META).read_text())

    # --- writing -----------------------------------------------------------------------------
    def append(self, records: list[dict]) -> None:
        """Append records (a "file" record carries its bytes under "data"; they go to a blob
        first, so a line never names a blob that is not complete)."""
        lines = []
        for record in records:
            if "data" in record:
                name = uuid.uuid4().hex
                _atomic_write(self.dir / BLOBS / name, record["data"])
                record = {"file": record["file"], "blob": name}
            lines.append(json.dumps(record) + "\n")
        if not lines:
            return
        fd = os.open(self.dir / RECORDS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, "".join(lines).encode())
            os.fsync(fd)  # what is spooled must outlive this process
        finally:
            os.close(fd)

    # --- reading and sending (the owner) --------------------------------------------------------
    def records(self) -> list[dict]:
        """Every record, sent or not, in order (a torn last line, from a process killed while
        appending, is left out)."""
        try:
            text = (self.dir / RECORDS).read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            out.append(json.loads(line))
        return out

    def sent(self) -> int:
        try:
            return int((self.dir / SENT).read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def mark_sent(self, count: int) -> None:
        _atomic_write(self.dir / SENT, str(count))

    def pending(self) -> list[dict]:
        return self.records()[self.sent():]

    def blob(self, record: dict) -> bytes:
        return (self.dir / BLOBS / record["blob"]).read_bytes()

    def try_own(self) -> bool:
        """Take owner.lock without waiting; False while another process sends this spool."""
        if self._lock_fd is not None:
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def remove(self) -> None:
        """Everything was sent: delete the directory (the owner only)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.release()


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
