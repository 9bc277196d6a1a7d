"""Monitoring records: one JSON line per served image, written in the background, never blocking a request.

A request hands its scores, upload facts and the ``core.imagestats.image_statistics`` of its model inputs
(the statistics the drift reference is described by, which the predictor computes anyway for its domain notes)
to :meth:`RecordWriter.submit`, which only appends to a bounded in-memory queue (full: the records are dropped
and counted, the request is answered anyway). The writer thread appends the lines to
``<dir>/records/*.jsonl``:

* one file per UTC hour, host and process, rotated to a new sequence number beyond ``max_file_bytes``;
* the folder bounded to ``max_total_bytes``: at each rotation the oldest files are deleted;
* every batch of lines goes out in one ``write`` to a file opened with ``O_APPEND``, so replicas sharing a
  volume never interleave partial lines, and only a killed machine can leave a partial last line;
* an unwritable or full store logs a warning and counts the lost records; requests never fail for it.

:meth:`RecordWriter.close` (called when the model server stops, and at exit) writes everything queued.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

from core.imagestats import STAT_NAMES
from core.imaging import InputFacts
from serving import metrics

log = logging.getLogger(__name__)

RECORDS_FOLDER = "records"
DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_TOTAL_BYTES = 1024 * 1024 * 1024
# A queued image is its facts and a few floats: 10,000 hold a few MB while the writer catches up.
DEFAULT_MAX_QUEUED_IMAGES = 10_000
# The writer lets records gather this long (or up to _BATCH_IMAGES images) before one write for all of them:
# per-request work in the background thread competes with requests for the CPU.
DEFAULT_FLUSH_INTERVAL_S = 1.0
_BATCH_IMAGES = 256
# A store that stays unwritable warns once per this many seconds, not once per request.
_WARN_EVERY_S = 60.0


@dataclass(frozen=True)
class _Entry:
    """One answered request, as queued."""

    ts: str
    model_version: str
    protocol: str
    probabilities: np.ndarray
    verdicts: list[str]
    facts: list[InputFacts]
    stats: dict[str, np.ndarray]  # STAT_NAMES -> (N,)


class RecordWriter:
    """Appends monitoring records to rotated JSONL files from a background thread.

    Args:
        directory: The monitoring folder; records go to its ``records/`` subfolder (created when needed).
        max_file_bytes: Start a new file once the current one would grow beyond this.
        max_total_bytes: Delete the oldest files once the folder holds more than this.
        max_queued_images: Drop (and count) records of requests arriving while this many wait to be written.
        flush_interval_s: How long records may wait to be written together.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        max_queued_images: int = DEFAULT_MAX_QUEUED_IMAGES,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
    ) -> None:
        self.folder = Path(directory) / RECORDS_FOLDER
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.max_queued_images = max_queued_images
        self.flush_interval_s = flush_interval_s
        # Host and process in the name: predictor replicas may share one volume.
        self._stem = f"{socket.gethostname()}-{os.getpid()}"
        self._pending: collections.deque[_Entry] = collections.deque()
        self._queued = 0  # images queued or being written
        self._closed = False
        self._condition = threading.Condition()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._hour = ""
        self._sequence = 0
        self._warned_at = -_WARN_EVERY_S
        self._dropped_when_full = 0
        # A daemon thread, so a stuck store can never keep the process alive; close() drains it.
        self._thread = threading.Thread(target=self._run, name="deepguard-records", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def submit(
        self,
        model_version: str,
        protocol: str,
        probabilities: np.ndarray,
        verdicts: list[str],
        facts: list[InputFacts],
        stats: dict[str, np.ndarray],
    ) -> bool:
        """Queue the records of one answered request; never blocks, never raises.

        Args:
            model_version: The version that scored the images.
            protocol: ``v1`` or ``v2``.
            probabilities: P(FAKE) per image.
            verdicts: REAL, FAKE or UNCERTAIN per image.
            facts: The uploads' size and format per image.
            stats: ``core.imagestats.image_statistics`` of the model inputs: ``STAT_NAMES`` -> ``(N,)``.

        Returns:
            False when the records were dropped (queue full, or the writer closed).
        """
        count = len(verdicts)
        ts = datetime.now(UTC).isoformat(timespec="milliseconds")
        entry = _Entry(ts, model_version, protocol, probabilities, verdicts, facts, stats)
        with self._condition:
            if self._closed or self._queued + count > self.max_queued_images:
                self._dropped_when_full += count
                dropped_so_far = self._dropped_when_full
            else:
                self._pending.append(entry)
                self._queued += count
                # Wake the writer only to start a batch or when one is full, not once per request.
                if len(self._pending) == 1 or self._queued >= _BATCH_IMAGES:
                    self._condition.notify()
                return True
        metrics.RECORDS_DROPPED.labels("queue_full").inc(count)
        self._warn("monitoring records dropped: the writer is behind (%d so far)", dropped_so_far)
        return False

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything queued, then stop the thread (idempotent)."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("monitoring records: the writer did not finish within %.0f s", timeout_s)

    # ---- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closed:
                    self._condition.wait()
                self._condition.wait_for(
                    lambda: self._closed or self._queued >= _BATCH_IMAGES, timeout=self.flush_interval_s
                )
                if not self._pending:  # closed and drained
                    break
                entries = list(self._pending)
                self._pending.clear()
            try:
                self._write(entries)
            except Exception:  # a bug here must not silently stop monitoring for the process's life
                log.exception("monitoring records: %d records lost", sum(len(e.verdicts) for e in entries))
            finally:
                with self._condition:
                    self._queued -= sum(len(entry.verdicts) for entry in entries)
        self._close_file()

    def _write(self, entries: list[_Entry]) -> None:
        stats = {
            name: np.concatenate([entry.stats[name] for entry in entries]).tolist() for name in STAT_NAMES
        }
        lines, i = [], 0
        for entry in entries:
            for probability, verdict, fact in zip(
                entry.probabilities.tolist(), entry.verdicts, entry.facts, strict=True
            ):
                record = {
                    "ts": entry.ts,
                    "model_version": entry.model_version,
                    "protocol": entry.protocol,
                    "fake_probability": probability,
                    "verdict": verdict,
                    "width": fact.width,
                    "height": fact.height,
                    "format": fact.format,
                    **{name: stats[name][i] for name in STAT_NAMES},
                }
                lines.append(orjson.dumps(record))
                i += 1
        data = b"\n".join(lines) + b"\n"
        hour = entries[-1].ts[:13].replace("-", "")  # 2026-12-01T18 -> 20261201T18
        try:
            self._append(data, hour)
        except OSError as exc:
            self._close_file()
            metrics.RECORDS_DROPPED.labels("write_error").inc(len(lines))
            self._warn("monitoring records not written to %s: %s", self.folder, exc)
            return
        metrics.RECORDS_WRITTEN.inc(len(lines))

    def _append(self, data: bytes, hour: str) -> None:
        if self._fd is not None and (hour != self._hour or self._size + len(data) > self.max_file_bytes):
            self._close_file()
            self._sequence = self._sequence + 1 if hour == self._hour else 0
        if self._fd is None:
            self._open(hour)
        view = memoryview(data)
        while view:  # os.write may write less than asked (a signal, a full pipe); finish the batch
            written = os.write(self._fd, view)
            view = view[written:]
            self._size += written

    def _open(self, hour: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._hour = hour
        self._path = self.folder / f"{hour}-{self._stem}-{self._sequence:04d}.jsonl"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._bound_total()

    def _bound_total(self) -> None:
        """Delete the oldest files (any replica's) while the folder holds more than ``max_total_bytes``."""
        files = []
        for path in self.folder.glob("*.jsonl"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # another replica deleted it meanwhile
                continue
            files.append((stat.st_mtime, path.name, stat.st_size, path))
        files.sort()
        total = sum(size for _, _, size, _ in files)
        for _, _, size, path in files:
            if total <= self.max_total_bytes:
                break
            if path == self._path:
                continue
            path.unlink(missing_ok=True)
            total -= size
            log.info("monitoring records: deleted %s to stay under %d bytes", path.name, self.max_total_bytes)

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as exc:
                log.warning("monitoring records: closing %s: %s", self._path, exc)

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning(message, *args)
