"""Where the images come from: Kaggle, a local archive or folder in the Kaggle layout, or synthetic data.

``locate`` resolves ``data.source`` (``auto`` included) into a concrete source with a fingerprint; ingest
writes that fingerprint to ``data/source.json`` so DVC reruns ingest exactly when the source changes.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import io
import json
import logging
import os
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.config import DataParams
from core.errors import DeepGuardError, TransientError
from core.feedback import ACCEPTED, FeedbackError, FeedbackItem, FeedbackStore
from core.formats import FORMATS
from core.labels import CLASS_NAMES
from core.names import DATA_ENV
from core.settings import settings

log = logging.getLogger(__name__)

SPLIT_FOLDERS: tuple[str, ...] = ("train", "test")
IMAGE_SUFFIXES = {f".{suffix}" for f in FORMATS for suffix in f.suffixes}
KAGGLE_CACHE = Path(".cache/kaggle")
# Where this project keeps CIFAKE beside a checkout (../shared/data), full archive first: offered to a
# newcomer whose run would otherwise fall back to synthetic data.
NEARBY_ARCHIVES: tuple[Path, ...] = (
    Path("../shared/data/cifake.zip"),
    Path("../shared/data/cifake-sample.zip"),
)
# Largest image file ingest (and evaluate, in an extra set) reads: a CIFAKE image is 1-3 KB and a 512x512
# PNG under 1 MiB, so anything past this is a zip bomb or not a dataset image, and reading it could exhaust
# memory. The predictor would refuse an upload this large too, so an extra set's file over it is left out.
MAX_IMAGE_BYTES = 16 * 1024 * 1024


class SourceError(DeepGuardError):
    """The configured data source cannot be used; the message says how to fix it."""


class SourceUnavailableError(SourceError, TransientError):
    """The data source did not answer, or failed on its side (Kaggle offline, a 5xx): a later try may work."""


def _source_error(message: str, exc: Exception) -> SourceError:
    """The error for a failed call to a remote source: transient unless the source refused us (a 4xx)."""
    import requests

    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403):  # Kaggle refused the credentials: which ones it used is what the user must check
        return SourceError(f"{message}: Kaggle refused the credentials; {_kaggle_credentials_used()}")
    if isinstance(status, int):
        transient = status >= 500 or status == 429
    else:
        offline = (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout)
        transient = isinstance(exc, offline)
    return (SourceUnavailableError if transient else SourceError)(message)


def _kaggle_credentials_used() -> str:
    """Where the kaggle package took its credentials from (its own order), so a refused one can be fixed."""
    env = settings()
    if env.kaggle_api_token:
        return "check KAGGLE_API_TOKEN (create a new one: Kaggle > Settings > API)"
    if env.kaggle_username and env.kaggle_key:
        return "check KAGGLE_USERNAME and KAGGLE_KEY (create a new token: Kaggle > Settings > API)"
    return (
        f"check kaggle.json or access_token in {env.kaggle_dir}, or set KAGGLE_USERNAME and KAGGLE_KEY "
        "(or KAGGLE_API_TOKEN), or run `kaggle auth login`"
    )


@dataclass(frozen=True)
class Source:
    """A resolved data source."""

    kind: str  # kaggle | local | synthetic
    location: str  # dataset slug, archive/folder path, or "generated"
    fingerprint: str  # changes exactly when the source's content may have changed
    reason: str  # why auto picked it (or "configured")

    @property
    def synthetic(self) -> bool:
        """True for generated stand-in data (not CIFAKE)."""
        return self.kind == "synthetic"

    def provenance(self) -> dict:
        """Where the data came from, for the data report: kind, location and reason, not the fingerprint.

        Train and register depend on the report, so a fingerprint there would retrain whenever the archive's
        modification time changes (a copy, a re-download of the same bytes). Ingest reruns on it (through
        ``data/source.json``) and rewrites the report unchanged when the images are the same.
        """
        return {"kind": self.kind, "location": self.location, "reason": self.reason}


@dataclass(frozen=True)
class Entry:
    """One image file of a source: its split, class and bytes."""

    split: str
    class_name: str
    name: str
    data: bytes
    origin: str = "dataset"  # or FEEDBACK: counted apart in the data report


def kaggle_credentials_present() -> bool:
    """True when the kaggle package will find credentials: KAGGLE_USERNAME + KAGGLE_KEY, KAGGLE_API_TOKEN,
    or kaggle.json / access_token in KAGGLE_CONFIG_DIR (default ~/.kaggle, or ~/.config/kaggle without it)."""
    return settings().kaggle_credentials


def _path_fingerprint(path: Path) -> str:
    """``path:size:mtime`` of an archive; of a folder, its image count and hash of their paths, sizes, mtimes.

    A folder's own mtime changes only when an entry is added to or removed from it directly, never when an
    image in ``train/FAKE`` is added, replaced or deleted: DVC would then skip ingest and train on stale data.
    Only image files count, as in ingest; they are stat'ed, not read.
    """
    if not path.is_dir():
        stat = path.stat()
        return f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    digest = hashlib.sha256()
    count = 0
    for parts, file in _image_members(path):
        stat = file.stat()
        digest.update(f"{'/'.join(parts)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        count += 1
    return f"{path.resolve()}:{count} images:{digest.hexdigest()[:16]}"


def nearby_archives() -> list[Path]:
    """The CIFAKE archives of :data:`NEARBY_ARCHIVES` that exist, relative to the current folder."""
    return [path for path in NEARBY_ARCHIVES if path.is_file()]


def _near_misses(path: Path) -> str:
    """What a mistyped ``path`` may have meant: the close names beside it, else where a relative path starts.

    A newcomer types ``cifake-smaple.zip`` or leaves off ``.zip``; a relative path read from another folder
    than the one it was typed in (``make -C``) is missing for a reason the bare path does not show.
    """
    try:
        names = [entry.name for entry in path.parent.iterdir()] if path.parent.is_dir() else []
    except OSError:  # unreadable folder: no suggestions
        names = []
    close = difflib.get_close_matches(path.name, names, n=2, cutoff=0.75)
    if close:
        return "; did you mean " + " or ".join(str(path.parent / name) for name in close) + "?"
    return "" if path.is_absolute() else f"; a relative path, read from {Path.cwd()}"


def locate(params: DataParams) -> Source:
    """Resolve ``data.source`` into a concrete source, without reading any image.

    ``auto`` picks Kaggle when credentials exist, else the path in ``DEEPGUARD_DATA``, else synthetic.

    Raises:
        SourceError: for an explicit source that cannot be used (missing credentials or path).
    """
    synthetic_print = json.dumps(
        {"per_class": params.synthetic_per_class, "size": params.image_size}, sort_keys=True
    )
    choice = params.source
    env_path = settings().data
    if choice == "auto":
        if kaggle_credentials_present():
            choice, reason = "kaggle", "Kaggle credentials found"
            if env_path:
                reason += f" (they come before {DATA_ENV}; for {env_path} set data.source: local)"
        elif env_path:
            choice, reason = "local", f"{DATA_ENV} is set"
        else:
            choice, reason = "synthetic", f"no Kaggle credentials and no {DATA_ENV}"
    else:
        reason = "configured in params.yaml"
        if env_path and choice != "local":
            log.warning("%s=%s is set but not used: data.source is %s", DATA_ENV, env_path, choice)
    if choice == "kaggle":
        if not kaggle_credentials_present():
            raise SourceError(
                "Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), put "
                f"kaggle.json (Kaggle > Settings > API > Create New Token) in {settings().kaggle_dir}, or "
                "run `kaggle auth login`"
            )
        return Source("kaggle", params.kaggle_dataset, f"kaggle:{params.kaggle_dataset}", reason)
    if choice == "local":
        raw_path = env_path or params.local_path
        if not raw_path:
            raise SourceError(
                f"data.source is local but neither {DATA_ENV} nor data.local_path names an archive or folder"
            )
        path = Path(raw_path).expanduser()
        if not path.exists():  # name where the path came from: DEEPGUARD_DATA wins over data.local_path
            named_by = f"{DATA_ENV}, which wins over data.local_path" if env_path else "data.local_path"
            raise SourceError(f"{path}: no such archive or folder (named by {named_by}){_near_misses(path)}")
        return Source("local", str(path.resolve()), _path_fingerprint(path), reason)
    return Source("synthetic", "generated", f"synthetic:{synthetic_print}", reason)


def download_kaggle(dataset: str, dest: Path = KAGGLE_CACHE) -> Path:
    """Download the Kaggle dataset zip (once; cached) and return its path.

    Raises:
        SourceError: when the download fails (network, credentials rejected, unknown dataset).
    """
    archive = dest / f"{dataset.split('/')[-1]}.zip"
    if archive.is_file() and zipfile.is_zipfile(archive):
        log.info("using cached Kaggle download %s", archive)
        return archive
    dest.mkdir(parents=True, exist_ok=True)
    printed = io.StringIO()
    try:
        # The kaggle package authenticates on import too, and when it finds no usable credentials it prints a
        # page of help and calls exit(1): SystemExit, which no `except Exception` stops.
        with contextlib.redirect_stdout(printed):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except SystemExit:
        raise SourceError(
            "Kaggle found no usable credentials: set KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY, or "
            f"put a complete kaggle.json (username and key) or access_token in {settings().kaggle_dir}"
        ) from None
    except Exception as exc:  # the token is checked online: unreachable is an error like the download's
        why = f"{type(exc).__name__}: {exc}"
        raise _source_error(f"Kaggle sign-in for {dataset} failed: {why}", exc) from None
    for line in printed.getvalue().splitlines():  # e.g. "your Kaggle API key is readable by other users"
        if line.strip():
            log.warning("kaggle: %s", line.strip())
    try:
        log.info("downloading Kaggle dataset %s to %s", dataset, dest)
        api.dataset_download_files(dataset, path=str(dest), unzip=False, quiet=False)
    except Exception as exc:  # the kaggle client raises many types (HTTP, auth, OS); all mean "no data"
        why = f"{type(exc).__name__}: {exc}"
        raise _source_error(f"Kaggle download of {dataset} failed: {why}", exc) from None
    if not archive.is_file():
        raise SourceError(f"Kaggle download of {dataset} produced no {archive.name} in {dest}")
    return archive


def _order(split: str, class_name: str, name: str) -> tuple[int, str, str]:
    # train before test: ingest must know every train image before it checks test for leakage.
    return SPLIT_FOLDERS.index(split), class_name, name


def _class_of(folder: str) -> str | None:
    """The class a folder name stands for, in any case: ``real/`` and ``Fake/`` are ``REAL`` and ``FAKE``."""
    return folder.upper() if folder.upper() in CLASS_NAMES else None


def _split_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """Find ``<split>/<CLASS>/`` in a file's path: the last such pair of folders, in any case.

    A top folder above it is allowed, and so are folders below it (``train/REAL/2024-06/x.jpg``: a team adding
    its images in batches), which were skipped without a word, leaving "no images in train/REAL".
    """
    for i in range(len(parts) - 3, -1, -1):
        if parts[i].lower() in SPLIT_FOLDERS and (class_name := _class_of(parts[i + 1])):
            return parts[i].lower(), class_name
    return None


def _labelled_class(parts: tuple[str, ...]) -> str | None:
    """The class of a file of an extra set: its nearest ``REAL/`` or ``FAKE/`` folder, in any case."""
    return next((name for folder in reversed(parts[:-1]) if (name := _class_of(folder))), None)


def _check_layout(found: set[tuple[str, str]], where: str) -> None:
    expected = {(split, name) for split in SPLIT_FOLDERS for name in CLASS_NAMES}
    missing = sorted(expected - found)
    if missing:
        shown = ", ".join(f"{s}/{c}" for s, c in missing)
        if not found:
            fix = "put the images in the folders train/REAL, train/FAKE, test/REAL and test/FAKE"
        elif {split for split, _ in missing} == {"test"} and not any(split == "test" for split, _ in found):
            # A team with only labelled training images: the test split is theirs to choose, and fixed.
            fix = (
                "move a share of your images (e.g. a fifth of each class) to test/REAL and test/FAKE: the "
                "held-out test split every model is measured and compared on"
            )
        else:
            fix = "add images of that class there"
        raise SourceError(
            f"{where}: not in the Kaggle layout train|test/REAL|FAKE: no images in {shown}; {fix}"
        )


# An image file of a source: its path in a folder, or its member of a zip archive.
Member = Path | zipfile.ZipInfo


def _image_members(path: Path) -> list[tuple[tuple[str, ...], Member]]:
    """Every image file (by suffix) of a folder or zip archive, with its path parts inside it.

    Raises:
        SourceError: for a path that is neither a folder nor a zip archive.
    """
    if path.is_dir():
        files = sorted(p for p in _walk(path) if p.suffix.lower() in IMAGE_SUFFIXES)
        return [
            (file.relative_to(path).parts, file)
            for file in files
            if not _os_metadata(file.relative_to(path).parts)
        ]
    if not zipfile.is_zipfile(path):
        raise SourceError(f"{path}: not a zip archive or a folder")
    with zipfile.ZipFile(path) as archive:
        return [
            (parts, info)
            for info in archive.infolist()
            if not info.is_dir()
            and Path(info.filename).suffix.lower() in IMAGE_SUFFIXES
            and not _os_metadata(parts := Path(info.filename).parts)
        ]


def _os_metadata(parts: tuple[str, ...]) -> bool:
    """Files an operating system adds beside images: macOS's ``__MACOSX/`` and ``._x.jpg`` companions.

    They carry an image's suffix but hold no image, so ingest counted each as a rejected image (``._x.jpg``:
    "not an image") and an extra set warned about every one.
    """
    return "__MACOSX" in parts[:-1] or parts[-1].startswith("._")


def _walk(root: Path) -> Iterator[Path]:
    """Every file under ``root``, following symbolic links to folders, each folder once.

    ``Path.rglob`` does not follow linked folders, so a dataset assembled from links (``train/REAL ->
    /data/real``) read as empty; following them, a link back up (a loop) must not recurse forever.
    """
    seen: set[tuple[int, int]] = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:
            subfolders.clear()  # a folder reached again through a link: its files are already listed
            continue
        seen.add((stat.st_dev, stat.st_ino))
        for name in names:
            file = Path(folder, name)
            if file.is_file():
                yield file


def read_each(path: Path, members: list[Member]) -> Iterator[bytes | SourceError]:
    """Yield the bytes of each of ``members`` of the folder or zip ``path``, in order, or why it was refused.

    A file over ``MAX_IMAGE_BYTES`` or unreadable is refused on its own, and never more than the limit plus
    one byte of it is read: the caller decides whether that stops it (ingest) or leaves it out (extra sets).
    """
    with contextlib.ExitStack() as stack:
        if path.is_dir():
            read = _read_file
        else:
            archive = stack.enter_context(zipfile.ZipFile(path))
            read = functools.partial(_read_entry, archive, path=path)
        for member in members:
            try:
                data: bytes | SourceError = read(member)
            except SourceError as exc:
                data = exc
            yield data


def read_members(path: Path, members: list[Member]) -> Iterator[bytes]:
    """Yield the bytes of ``members`` of the folder or zip ``path``, in order, each refused past the limit.

    Raises:
        SourceError: for an oversized or unreadable file.
    """
    for data in read_each(path, members):
        if isinstance(data, SourceError):
            raise data
        yield data


def iter_entries(path: Path) -> Iterator[Entry]:
    """Yield the images of a zip archive or folder in the Kaggle layout: train first, then test, sorted.

    Files that are not images by suffix are skipped; a missing split/class folder is an error.

    Raises:
        SourceError: for a file that is not a zip, or a wrong layout.
    """
    located = [
        (where, parts[-1], member) for parts, member in _image_members(path) if (where := _split_class(parts))
    ]
    _check_layout({where for where, _, _ in located}, str(path))
    located.sort(key=lambda item: _order(*item[0], item[1]))
    data = read_members(path, [member for _, _, member in located])
    for ((split, class_name), name, _), content in zip(located, data, strict=True):
        yield Entry(split, class_name, name, content)


def list_labelled(path: Path) -> list[tuple[str, Member]]:
    """The images of a folder or zip laid out as ``[top/]REAL|FAKE/[...]/<file>``, any size: (class, member).

    Only lists (no image is read), so a wrong set is refused before any work; read with :func:`read_members`.

    Raises:
        SourceError: for a missing path, a file that is not a zip, or a class folder without images.
    """
    if not path.exists():
        raise SourceError(f"{path}: no such archive or folder{_near_misses(path)}")
    located = [
        (class_name, member)
        for parts, member in _image_members(path)
        if (class_name := _labelled_class(parts))
    ]
    missing = [name for name in CLASS_NAMES if name not in {class_name for class_name, _ in located}]
    if missing:
        raise SourceError(
            f"{path}: not in the layout REAL/ and FAKE/ image folders: no images in {', '.join(missing)}"
            + _unread_suffixes(path, missing)
        )
    return located


def _unread_suffixes(path: Path, classes: list[str]) -> str:
    """Why class folders that hold files have no images: their suffixes (``.heic``), and the ones read here.

    A phone's HEIC photos were skipped by their suffix without a word: "no images in REAL" beside a full
    REAL/ folder.
    """
    if path.is_dir():
        names = [file.relative_to(path).parts for file in _walk(path)]
    else:
        with zipfile.ZipFile(path) as archive:
            names = [Path(info.filename).parts for info in archive.infolist() if not info.is_dir()]
    suffixes = Counter(
        Path(parts[-1]).suffix.lower() or "(none)"
        for parts in names
        if _labelled_class(parts) in classes and not parts[-1].startswith(".")
    )
    if not suffixes:
        return ""
    found = ", ".join(f"{count} {suffix}" for suffix, count in suffixes.most_common())
    return f" (files there: {found}; images are read by the suffixes {', '.join(sorted(IMAGE_SUFFIXES))})"


def _check_size(size: int, where: str) -> None:
    if size > MAX_IMAGE_BYTES:
        raise SourceError(
            f"{where}: {size} bytes, over the {MAX_IMAGE_BYTES}-byte limit for one image (a zip bomb?)"
        )


def _read_file(file: Path) -> bytes:
    """Read one file of a folder, refusing it by its size and again by the bytes read (it may have grown)."""
    try:
        _check_size(file.stat().st_size, f"{file}")
        with file.open("rb") as handle:
            data = handle.read(MAX_IMAGE_BYTES + 1)  # never more than the limit in memory
    except OSError as exc:
        raise SourceError(f"{file}: unreadable file ({exc.strerror or exc})") from None
    _check_size(len(data), f"{file}")
    return data


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    """Read one member, refusing it by its declared size and again by the bytes it actually inflates to.

    The header alone cannot be trusted: it is written by whoever made the archive.
    """
    where = f"{path}: {info.filename}"
    _check_size(info.file_size, where)
    try:
        with archive.open(info) as member:
            data = member.read(MAX_IMAGE_BYTES + 1)  # never more than the limit in memory
    # RuntimeError: an encrypted member; NotImplementedError: a compression method zipfile lacks.
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise SourceError(f"{where}: unreadable archive member ({exc})") from None
    _check_size(len(data), where)
    return data


def fingerprint_bytes(data: bytes) -> str:
    """The content hash used for duplicate detection and lineage."""
    return hashlib.sha256(data).hexdigest()


FEEDBACK = "feedback"  # the origin of entries from accepted user feedback


def feedback_store() -> FeedbackStore:
    """The user-feedback store: ``$DEEPGUARD_MONITORING_DIR/feedback`` (default ``monitoring/feedback``)."""
    return FeedbackStore(settings().monitoring_dir / "feedback")


def _accepted(store: FeedbackStore) -> list[FeedbackItem]:
    """The accepted items; a record edited by hand is a one-line error naming it, not a traceback."""
    try:
        return store.items(ACCEPTED)
    except FeedbackError as exc:
        raise SourceError(f"{store.root}: {exc}: fix or remove it (or set data.feedback: exclude)") from None


def feedback_fingerprint(store: FeedbackStore) -> str:
    """Changes exactly when the set of accepted items (or a claim) changes: part of data/source.json."""
    accepted = sorted(f"{item.id}:{item.claimed_label}" for item in _accepted(store))
    return hashlib.sha256("\n".join(accepted).encode()).hexdigest()


def feedback_entries(store: FeedbackStore) -> Iterator[Entry]:
    """The accepted feedback as train entries of the class the user claimed (a reviewer accepted the claim).

    The bytes are the upload's, unchanged: ingest validates them like any dataset image, so an upload that
    is not exactly image_size x image_size RGB is rejected and counted, never resized (resampling erases
    the high-frequency traces the detector learns from).
    """
    for item in _accepted(store):
        path = store.image_path(item)
        try:
            data = path.read_bytes()
        except OSError as exc:  # deleted by hand
            raise SourceError(
                f"{path}: the image of accepted feedback is unreadable ({exc.strerror or exc}): "
                f"put it back or remove its record {item.id}.json"
            ) from None
        _check_size(len(data), str(path))
        yield Entry("train", item.claimed_label, f"{item.id}.{item.suffix}", data, origin=FEEDBACK)


def with_feedback(entries: Iterable[Entry], feedback: Iterable[Entry]) -> Iterator[Entry]:
    """Yield ``entries``, then the feedback entries.

    Last, so that ingest knows every dataset image first: a feedback image that is already in train is a
    duplicate, and one that is in test is dropped as a leak (the test split, which the promotion gate
    compares models on, never changes because of feedback).
    """
    yield from entries
    yield from feedback
