"""Stage 1, ingest: fetch the images, validate each one, drop duplicates and train/test leaks, report.

Output ``data/raw/``: ``images.zip`` (the kept files, byte for byte, in the layout split/CLASS/name) and
``index.json`` (counts and the dataset's content hash); ``reports/data_report.json`` says what was dropped
and why.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import sys
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from core.atomic import atomic_path, write_json
from core.cli import run_stage, stage_parser
from core.config import DataParams, Params
from core.imaging import ImageError, validate_dataset_image
from core.labels import CLASS_NAMES
from core.names import DATA_ENV
from core.pipeline import ARCHIVE, DATA_REPORT, INDEX, RAW_DIR, SOURCE_MARKER
from core.settings import settings
from stages import sources, synthetic

log = logging.getLogger(__name__)

EXAMPLES_KEPT = 20  # rejected files listed by name in the report, per reason


@dataclass
class IngestReport:
    """Counts of what ingest kept and dropped, written as the data report."""

    source: dict
    seen: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    duplicates_within_split: Counter = field(default_factory=Counter)
    test_in_train: Counter = field(default_factory=Counter)
    capped: Counter = field(default_factory=Counter)
    # Accepted user feedback, by outcome (seen, kept, rejected, duplicate, test_in_train, capped).
    feedback: Counter | None = None
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    # Rejection reasons per (split, class), for the error when a split/class is left empty (no report then).
    rejected_in: dict[tuple[str, str], Counter] = field(default_factory=lambda: defaultdict(Counter))

    def note(self, reason: str, where: str) -> None:
        """Remember a few file names per drop reason."""
        if len(self.examples[reason]) < EXAMPLES_KEPT:
            self.examples[reason].append(where)

    def to_dict(self, data_hash: str) -> dict:
        """The JSON data report (DVC metric, MLflow artifact)."""

        def nested(counter: Counter) -> dict:
            out: dict[str, dict[str, int]] = {}
            for (split, class_name), n in sorted(counter.items()):
                out.setdefault(split, {})[class_name] = n
            return out

        return {
            "source": self.source,
            "synthetic": self.source["kind"] == "synthetic",
            "notice": synthetic.SYNTHETIC_NOTICE if self.source["kind"] == "synthetic" else "",
            "data_hash": data_hash,
            "seen": nested(self.seen),
            "kept": nested(self.kept),
            "total_kept": sum(self.kept.values()),
            "rejected": dict(sorted(self.rejected.items())),
            "duplicates_within_split": nested(self.duplicates_within_split),
            "test_in_train": nested(self.test_in_train),
            "capped_by_sample_per_class": nested(self.capped),
            "feedback": None
            if self.feedback is None
            else {
                outcome: self.feedback[outcome]
                for outcome in ("seen", "kept", "rejected", "duplicate", "test_in_train", "capped")
            },
            "examples": dict(sorted(self.examples.items())),
        }


def _entries(source: sources.Source, params: DataParams) -> Iterable[sources.Entry]:
    if source.kind == "synthetic":
        entries = synthetic.generate(params.synthetic_per_class, params.image_size)
    elif source.kind == "kaggle":
        entries = sources.iter_entries(sources.download_kaggle(source.location))
    else:
        entries = sources.iter_entries(Path(source.location))
    if params.feedback == "include":
        return sources.with_feedback(entries, sources.feedback_entries(sources.feedback_store()))
    return entries


def ingest(
    entries: Iterable[sources.Entry], params: DataParams, source: sources.Source, out_dir: Path
) -> dict:
    """Validate and deduplicate ``entries`` into ``out_dir/images.zip``; return the data report.

    Entries must come train first (as :func:`sources.iter_entries` yields them) so that test images that
    also occur in train can be found; accepted feedback (train entries of origin ``feedback``) comes last, and
    is dropped when it is a test image. Duplicates are the same bytes or the same decoded pixels.
    """
    report = IngestReport(
        source=source.provenance(), feedback=Counter() if params.feedback == "include" else None
    )
    seen_in_split: dict[str, set[str]] = defaultdict(set)
    kept_hashes: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out_dir / ARCHIVE, "w", compression=zipfile.ZIP_STORED) as archive:
        for entry in entries:
            key = (entry.split, entry.class_name)
            where = f"{entry.split}/{entry.class_name}/{entry.name}"
            report.seen[key] += 1
            # Feedback outcomes are counted apart too: one more for the first outcome below that applies.
            tally = report.feedback if entry.origin == sources.FEEDBACK else Counter()
            tally["seen"] += 1
            # A test image seen in train leaks; so does feedback (always train, read last) seen in test.
            other = "train" if entry.split == "test" else "test" if entry.origin == sources.FEEDBACK else ""
            digest = sources.fingerprint_bytes(entry.data)
            if _seen_before(digest, seen_in_split, entry.split, other, report, tally, where):
                continue
            try:
                pixels = validate_dataset_image(entry.data, params.image_size)
            except ImageError as exc:
                reason = str(exc).split(":")[0]
                report.rejected[reason] += 1
                report.rejected_in[key][reason] += 1
                tally["rejected"] += 1
                report.note(reason, f"{where}: {exc}")
                continue
            # The same pixels in other bytes (metadata added or stripped, saved again as PNG): the same image.
            pixel_digest = "pixels:" + sources.fingerprint_bytes(pixels.tobytes())
            if _seen_before(pixel_digest, seen_in_split, entry.split, other, report, tally, where):
                continue
            if params.sample_per_class is not None and report.kept[key] >= params.sample_per_class:
                report.capped[key] += 1
                tally["capped"] += 1
                continue
            report.kept[key] += 1
            tally["kept"] += 1
            suffix = Path(entry.name).suffix.lower()
            info = zipfile.ZipInfo(
                f"{entry.split}/{entry.class_name}/{digest[:16]}{suffix}", date_time=(2020, 1, 1, 0, 0, 0)
            )  # fixed: same input, same bytes
            archive.writestr(info, entry.data)
            kept_hashes.append(f"{entry.split}/{entry.class_name}/{digest}")
            if sum(report.seen.values()) % 10_000 == 0:
                log.info("ingest: %d images read, %d kept", sum(report.seen.values()), len(kept_hashes))
    if report.feedback is not None and report.feedback["capped"]:
        # Feedback is read after the dataset, so a cap the dataset already fills leaves all of it out.
        log.warning(
            "ingest: %d accepted feedback images left out: data.sample_per_class (%d) was already reached "
            "by the dataset's images of their class; unset or raise it to train on them",
            report.feedback["capped"],
            params.sample_per_class,
        )
    data_hash = hashlib.sha256("\n".join(sorted(kept_hashes)).encode()).hexdigest()
    result = report.to_dict(data_hash)
    for split in sources.SPLIT_FOLDERS:
        for class_name in CLASS_NAMES:
            if not result["kept"].get(split, {}).get(class_name):
                raise sources.SourceError(
                    f"{source.location}: no valid images left in {split}/{class_name}: "
                    + _why_none_left(report, (split, class_name), params)
                )
    write_json(
        out_dir / INDEX,
        {
            "kept": result["kept"],
            "data_hash": data_hash,
            "synthetic": result["synthetic"],
            "notice": result["notice"],
            "source": source.kind,
            "image_size": params.image_size,
        },
    )
    return result


def _seen_before(
    fingerprint: str,
    seen_in_split: dict[str, set[str]],
    split: str,
    other: str,
    report: IngestReport,
    tally: Counter,
    where: str,
) -> bool:
    """Count an image seen before in its split (a duplicate) or in ``other`` (a leak); else remember it."""
    key = (split, where.split("/")[1])
    if fingerprint in seen_in_split[split]:
        report.duplicates_within_split[key] += 1
        tally["duplicate"] += 1
        report.note("duplicate_within_split", where)
        return True
    seen_in_split[split].add(fingerprint)
    if fingerprint in seen_in_split.get(other, ()):
        report.test_in_train[key] += 1
        tally["test_in_train"] += 1
        report.note("test_in_train", where)
        return True
    return False


def _why_none_left(report: IngestReport, key: tuple[str, str], params: DataParams) -> str:
    """What became of the images of one split/class, e.g. ``3 found, 3 rejected (3 size 64x64, ...)``."""
    rejected = report.rejected_in[key]
    reasons = ", ".join(f"{n} {reason}" for reason, n in rejected.most_common(3))
    parts = [
        f"{report.seen[key]} found",
        f"{sum(rejected.values())} rejected" + (f" ({reasons})" if reasons else ""),
    ]
    if report.duplicates_within_split[key]:
        parts.append(f"{report.duplicates_within_split[key]} duplicates")
    if report.test_in_train[key]:
        parts.append(f"{report.test_in_train[key]} also in train")
    return ", ".join(parts) + (f"; {_what_to_do(rejected.most_common(1)[0][0], params)}" if rejected else "")


def _what_to_do(reason: str, params: DataParams) -> str:
    """The fix for the commonest reason (of validate_dataset_image) that left a split/class empty."""
    if match := re.fullmatch(r"size (\d+)x(\d+), expected \d+x\d+", reason):
        width, height = match.groups()
        if width == height and _image_size_allowed(params, int(width)):
            return (
                f"for {width}x{width} images set data.image_size: {width} (ingest never resizes a dataset "
                "image: resampling erases the traces the detector learns from)"
            )
        return "use square images of data.image_size (ingest never resizes or crops a dataset image)"
    if reason.startswith("mode "):
        return "save the images as RGB (ingest never converts a dataset image)"
    return "check that these files are images in a format read here"


def _image_size_allowed(params: DataParams, size: int) -> bool:
    """Whether ``data.image_size`` may be ``size`` (its bounds live in core/config.py only)."""
    try:
        DataParams.model_validate({**params.model_dump(), "image_size": size})
    except ValueError:
        return False
    return True


def write_source_marker(source: sources.Source, params: DataParams) -> None:
    """Write data/source.json only when it changes, so DVC reruns ingest exactly when the source changes.

    With ``data.feedback: include`` the marker also holds the accepted feedback's fingerprint: accepting or
    rejecting an item reruns ingest.
    """
    marker = {"kind": source.kind, "location": source.location, "fingerprint": source.fingerprint}
    if params.feedback == "include":
        marker["feedback"] = sources.feedback_fingerprint(sources.feedback_store())
    if SOURCE_MARKER.is_file():
        from core.atomic import read_json

        if read_json(SOURCE_MARKER) == marker:
            return
    write_json(SOURCE_MARKER, marker)


def check_recorded_source(source: sources.Source) -> None:
    """Under ``dvc repro``, refuse a source other than the one data/source.json records.

    The marker is ingest's DVC dependency, the source dvc.lock records. Ingest rerun by DVC for another reason
    (a ``data`` param, its code) in a shell whose environment now locates another source (``DEEPGUARD_DATA``
    unset: synthetic data) would train on that one and rewrite its own dependency mid-run. Run alone or by a
    pod, ingest uses the source it locates.

    Raises:
        SourceError: naming both sources and the command that switches.
    """
    if not settings().dvc_stage or not SOURCE_MARKER.is_file():
        return
    from core.atomic import read_json

    recorded = read_json(SOURCE_MARKER)
    if (recorded.get("kind"), recorded.get("location")) != (source.kind, source.location):
        raise sources.SourceError(
            f"{SOURCE_MARKER} records {recorded.get('kind')} {recorded.get('location')}, but this "
            f"environment locates {source.kind} {source.location} ({source.reason}): set {DATA_ENV} as "
            "when it was recorded, or run `python -m stages.ingest --locate` (make pipeline does) to switch"
        )


def run(params: Params) -> dict:
    """Run ingest in the current workspace.

    Returns:
        The data report.
    """
    source = sources.locate(params.data)
    log.info("data source: %s (%s; %s)", source.kind, source.location, source.reason)
    check_recorded_source(source)
    if source.synthetic:
        log.warning("%s", synthetic.SYNTHETIC_NOTICE)
    write_source_marker(source, params.data)
    with atomic_path(RAW_DIR) as tmp:
        report = ingest(_entries(source, params.data), params.data, source, tmp)
    write_json(DATA_REPORT, report)
    dropped = (
        sum(report["rejected"].values())
        + _total(report["duplicates_within_split"])
        + _total(report["test_in_train"])
    )
    if report["rejected"]:  # kept apart from the summary: a team whose images are half greyscale must see it
        log.warning(
            "ingest: %d images rejected (%s); examples in %s",
            sum(report["rejected"].values()),
            "; ".join(f"{n} {reason}" for reason, n in Counter(report["rejected"]).most_common(3)),
            DATA_REPORT,
        )
    if report["feedback"] is not None:
        log.info("ingest: accepted feedback %s", report["feedback"])
    log.info(
        "ingest done: %d images kept, %d dropped (%d invalid, %d duplicates, %d test-in-train); report %s",
        report["total_kept"],
        dropped,
        sum(report["rejected"].values()),
        _total(report["duplicates_within_split"]),
        _total(report["test_in_train"]),
        DATA_REPORT,
    )
    return report


def _total(nested: dict[str, dict[str, int]]) -> int:
    return sum(n for per_class in nested.values() for n in per_class.values())


def _main(args: argparse.Namespace, params: Params) -> None:
    if args.locate:
        source = sources.locate(params.data)
        write_source_marker(source, params.data)
        log.info("data source: %s (%s; %s) -> %s", source.kind, source.location, source.reason, SOURCE_MARKER)
        if source.synthetic and params.data.source == "auto":
            # The first lines a newcomer sees: say the data is synthetic and offer real CIFAKE if it is here.
            log.warning("%s", synthetic.SYNTHETIC_NOTICE)
            for archive in sources.nearby_archives():
                log.warning(
                    "%s is beside this checkout; to use it instead, run: %s=%s make run",
                    archive,
                    DATA_ENV,
                    archive,
                )
        return
    run(params)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m stages.ingest``."""
    parser = stage_parser("ingest", __doc__.splitlines()[0])
    parser.add_argument(
        "--locate",
        action="store_true",
        help="only resolve the data source and update data/source.json (run before dvc repro)",
    )
    return run_stage("ingest", _main, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
