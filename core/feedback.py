"""The user-feedback store: one image and one JSON record per item, in a folder per review status.

Layout under ``<monitoring dir>/feedback/``: ``pending/``, ``accepted/`` and ``rejected/``, each holding
``<sha256>.json`` (the record) and ``<sha256>.<ext>`` (the uploaded bytes). The id is the image's sha256, so
the same image sent twice is one item. The web app writes pending items (``POST /api/feedback``), a reviewer
moves them (``python -m stages.feedback accept|reject ID``), and ingest reads the accepted ones.

Standard library only: the web image copies this one file of ``core`` (images/web/Dockerfile).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.formats import ACCEPTED_FORMATS, FORMATS, sniff

PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
STATUSES: tuple[str, ...] = (PENDING, ACCEPTED, REJECTED)
# The classes a user may claim: core.labels.CLASS_NAMES (a test keeps the two equal; this module imports
# nothing of ours, see above).
CLAIMS: tuple[str, ...] = ("REAL", "FAKE")
VERDICTS: tuple[str, ...] = (*CLAIMS, "UNCERTAIN")
# Pending items waiting for review: past this the store refuses new ones until someone reviews.
MAX_PENDING = 10_000
# Bytes of the images awaiting review, together. The count alone let 10,000 items of the page's 10 MiB fill
# 100 GiB of the volume they share with the pipeline's workspace and the predictor's records, one client's
# rate limit at a time (a few GiB an hour each).
MAX_PENDING_BYTES = 1024**3
MAX_TEXT = 64  # model_version and similar short strings
_ID = re.compile(r"[0-9a-f]{64}")
# The suffix a stored image gets (what ingest and a reviewer's viewer expect): its format's first.
_SUFFIXES = frozenset(f.suffixes[0] for f in FORMATS)


class FeedbackError(ValueError):
    """A submission or a command the store refuses; ``field`` names what was wrong."""

    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class FeedbackTooLargeError(FeedbackError):
    """The image is over the store's ``max_image_bytes``."""

    status = 413


class FeedbackFullError(FeedbackError):
    """:data:`MAX_PENDING` items, or :data:`MAX_PENDING_BYTES` of images, already wait for review."""

    status = 507


class FeedbackConflictError(FeedbackError):
    """The image is already in the store with the other claim."""

    status = 409


class FeedbackNotFoundError(FeedbackError):
    """No item has this id."""

    status = 404


class FeedbackRecordError(FeedbackError):
    """A record in the store is not what :meth:`FeedbackStore.submit` wrote (edited by hand, cut short)."""

    status = 500


@dataclass(frozen=True)
class FeedbackItem:
    """One feedback record (the JSON file), plus where it is."""

    id: str
    claimed_label: str
    verdict: str
    fake_probability: float
    model_version: str
    ts: str
    suffix: str
    size: int
    status: str = PENDING

    def to_record(self) -> dict:
        """The JSON record (the status is the folder, not a field)."""
        record = asdict(self)
        del record["status"]
        return record


def image_suffix(data: bytes) -> str | None:
    """The storage suffix of an image by its first bytes (``png``, ``jpg``, ...), or None if not an image."""
    found = sniff(data)
    return None if found is None else found.suffixes[0]


def _write_atomic(path: Path, data: bytes) -> None:
    """Write beside ``path``, then rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _create_atomic(path: Path, data: bytes) -> bool:
    """Write beside ``path``, then link it there unless ``path`` exists: of concurrent writers, one wins.

    Returns:
        False when ``path`` already existed (another writer got there first; it is left as it was).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        try:
            os.link(tmp, path)  # atomic and exclusive, unlike a rename, which replaces
        except FileExistsError:
            return False
        except OSError:  # a volume without hard links (SMB shares): exclusive by a check, atomic by a rename
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class FeedbackStore:
    """The items under ``root`` (``<monitoring dir>/feedback``).

    Args:
        root: The feedback folder; created on first write.
        max_image_bytes: Size cap of one submitted image: the web app passes its per-file upload limit, so
            that any file the page scored can be reported (with ``max_pending`` it bounds the disk the items
            take). None, no cap: for the review command and ingest, which only read.
        max_pending: Count cap of items awaiting review.
        max_pending_bytes: Cap of the bytes of their images, together.
    """

    def __init__(
        self,
        root: Path,
        max_image_bytes: int | None = None,
        max_pending: int = MAX_PENDING,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self.root = Path(root)
        self.max_image_bytes = max_image_bytes
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes

    def submit(
        self,
        image: bytes,
        claimed_label: str,
        verdict: str,
        fake_probability: float | str,
        model_version: str,
        now: datetime | None = None,
    ) -> tuple[FeedbackItem, bool]:
        """Validate and store a pending item, or find the item this image already is.

        Args:
            image: The uploaded file's bytes.
            claimed_label: What the user says the image is: REAL or FAKE.
            verdict: What the service answered: REAL, FAKE or UNCERTAIN.
            fake_probability: The P(FAKE) the service answered, in [0, 1].
            model_version: The registry version that answered.
            now: The timestamp (default: the current UTC time).

        Returns:
            ``(item, created)``; ``created`` is False for an image already in the store (any status) with the
            same claim. The other claim on a rejected item reopens it: pending again, with this claim.

        Raises:
            FeedbackError: naming the field that is wrong (413 and 507 subclasses for the caps; 409 for an
                image pending or accepted with the other claim).
        """
        if not image:
            raise FeedbackError("image", "empty file")
        if self.max_image_bytes is not None and len(image) > self.max_image_bytes:
            limit = self.max_image_bytes
            raise FeedbackTooLargeError("image", f"{len(image)} bytes, over the limit of {limit}")
        suffix = image_suffix(image)
        if suffix is None:
            raise FeedbackError("image", f"not a {ACCEPTED_FORMATS} file")
        if claimed_label not in CLAIMS:
            raise FeedbackError("claimed_label", f"{claimed_label!r} is not one of {', '.join(CLAIMS)}")
        if verdict not in VERDICTS:
            raise FeedbackError("verdict", f"{verdict!r} is not one of {', '.join(VERDICTS)}")
        try:
            probability = float(fake_probability)
        except (TypeError, ValueError):
            raise FeedbackError("fake_probability", f"{fake_probability!r} is not a number") from None
        if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
            raise FeedbackError("fake_probability", f"{probability} is not in [0, 1]")
        if not model_version or len(model_version) > MAX_TEXT or not model_version.isprintable():
            raise FeedbackError("model_version", f"expected 1 to {MAX_TEXT} printable characters")
        item_id = hashlib.sha256(image).hexdigest()
        existing = self._find(item_id)
        # A rejected claim's opposite agrees with the reviewer's decision: it is reviewed anew, not refused.
        reopen = (
            existing is not None and existing.status == REJECTED and existing.claimed_label != claimed_label
        )
        if existing is not None and not reopen:
            return self._same_claim(existing, claimed_label), False
        if self.count(PENDING) >= self.max_pending:
            raise FeedbackFullError("feedback", f"{self.max_pending} items already wait for review")
        if self.pending_bytes() + len(image) > self.max_pending_bytes:
            limit = self.max_pending_bytes / 1024**2
            raise FeedbackFullError("feedback", f"the images waiting for review already hold {limit:g} MiB")
        stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
        item = FeedbackItem(
            item_id, claimed_label, verdict, probability, model_version, stamp, suffix, len(image)
        )
        folder = self.root / PENDING
        folder.mkdir(parents=True, exist_ok=True)
        # Image first, record second: a record always has its image (the record is what makes an item). The
        # image's name is its hash, so concurrent writers of it write the same bytes; the record is created
        # exclusively, so of two concurrent submissions of one image only the first is told it was recorded.
        _write_atomic(folder / f"{item_id}.{suffix}", image)
        if not _create_atomic(folder / f"{item_id}.json", json.dumps(item.to_record(), indent=2).encode()):
            return self._same_claim(self._read(folder / f"{item_id}.json", PENDING), claimed_label), False
        if reopen:  # the record first: while both exist the pending one is found first
            (self.root / REJECTED / f"{item_id}.json").unlink(missing_ok=True)
            (self.root / REJECTED / f"{item_id}.{existing.suffix}").unlink(missing_ok=True)
        return item, True

    @staticmethod
    def _same_claim(existing: FeedbackItem, claimed_label: str) -> FeedbackItem:
        """``existing`` when it makes the same claim; one image is one item.

        Raises:
            FeedbackConflictError: for the other claim, which must not read as recorded.
        """
        if existing.claimed_label != claimed_label:
            raise FeedbackConflictError(
                "claimed_label",
                f"this image was already reported as {existing.claimed_label} ({existing.status})",
            )
        return existing

    def _read(self, record: Path, status: str) -> FeedbackItem:
        """The item of one record file, checked: ingest and :meth:`move` trust its id, claim and suffix.

        Raises:
            FeedbackRecordError: naming the file, for a record that is not what :meth:`submit` wrote.
        """
        where = f"{status}/{record.name}"
        try:
            item = FeedbackItem(**json.loads(record.read_bytes()), status=status)
        except (ValueError, TypeError) as exc:  # not JSON, not UTF-8, not an object, a field missing or extra
            raise FeedbackRecordError("record", f"{where} is not a feedback record ({exc})") from None
        if (
            item.id != record.stem
            or item.claimed_label not in CLAIMS
            or item.suffix not in _SUFFIXES
            or not isinstance(item.fake_probability, int | float)
        ):
            raise FeedbackRecordError(
                "record",
                f"{where}: its id, claimed_label, fake_probability or suffix is not as submit writes them",
            )
        return item

    def _find(self, item_id: str) -> FeedbackItem | None:
        for status in STATUSES:
            record = self.root / status / f"{item_id}.json"
            if record.is_file():
                return self._read(record, status)
        return None

    def get(self, item_id: str) -> FeedbackItem:
        """The item with this id (a unique prefix of at least 8 characters also works).

        Raises:
            FeedbackNotFoundError: for an unknown or ambiguous id.
        """
        if not re.fullmatch(r"[0-9a-f]{8,64}", item_id):
            raise FeedbackNotFoundError("id", f"{item_id!r} is not a feedback id (8 to 64 hex digits)")
        # Only the records this id names are read: a broken record of another item does not block this one.
        matches = [
            self._read(record, status)
            for status in STATUSES
            for record in sorted((self.root / status).glob(f"{item_id}*.json"))
            if _ID.fullmatch(record.stem)
        ]
        if len(matches) != 1:
            found = "no item" if not matches else f"{len(matches)} items"
            raise FeedbackNotFoundError("id", f"{found} with id {item_id}")
        return matches[0]

    def items(self, status: str | None = None) -> list[FeedbackItem]:
        """Every item, or those with ``status``, oldest first."""
        found = []
        for name in STATUSES if status is None else (status,):
            folder = self.root / name
            if folder.is_dir():
                for record in folder.glob("*.json"):
                    if _ID.fullmatch(record.stem):
                        found.append(self._read(record, name))
        return sorted(found, key=lambda item: (item.ts, item.id))

    def count(self, status: str) -> int:
        """How many items have ``status`` (no record is read)."""
        folder = self.root / status
        return sum(1 for p in folder.glob("*.json") if _ID.fullmatch(p.stem)) if folder.is_dir() else 0

    def pending_bytes(self) -> int:
        """The bytes of the images awaiting review (a stat per file; no record is read)."""
        folder = self.root / PENDING
        if not folder.is_dir():
            return 0
        with os.scandir(folder) as entries:
            return sum(
                entry.stat().st_size
                for entry in entries
                if entry.is_file() and not entry.name.endswith(".json") and _ID.match(entry.name)
            )

    def image_path(self, item: FeedbackItem) -> Path:
        """Where the item's image is: beside its record, or where an interrupted :meth:`move` put it."""
        here = self.root / item.status / f"{item.id}.{item.suffix}"
        moved = (self.root / status / here.name for status in STATUSES if status != item.status)
        return next((path for path in moved if path.is_file() and not here.is_file()), here)

    def move(self, item_id: str, status: str) -> FeedbackItem:
        """Accept or reject an item (a decision can be changed later).

        Returns:
            The item with its new status.

        Raises:
            FeedbackError: for an unknown status or an item already there; FeedbackNotFoundError;
                FeedbackRecordError for an item whose image is missing.
        """
        if status not in STATUSES:
            raise FeedbackError("status", f"{status!r} is not one of {', '.join(STATUSES)}")
        item = self.get(item_id)
        if item.status == status:
            raise FeedbackError("id", f"{item.id} is already {status}")
        folder = self.root / status
        folder.mkdir(parents=True, exist_ok=True)
        image = self.image_path(item)
        if not image.is_file():  # deleted by hand: say so rather than fail half-way with a traceback
            where = f"{image.parent.name}/{image.name}"
            raise FeedbackRecordError("image", f"{where} is missing: remove its record {item.id}.json too")
        # Image first, record last: the record's folder is the item's status.
        os.replace(image, folder / f"{item.id}.{item.suffix}")
        os.replace(self.root / item.status / f"{item.id}.json", folder / f"{item.id}.json")
        return FeedbackItem(**item.to_record(), status=status)
