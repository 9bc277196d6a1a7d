"""Review user feedback: ``python -m stages.feedback list [--status S] | accept ID | reject ID``.

Items come from the web app's ``POST /api/feedback`` into ``$DEEPGUARD_MONITORING_DIR/feedback/pending``
(core/feedback.py). Accepted items join the train split at the next ingest when ``data.feedback: include``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from core.cli import run_stage, stage_parser
from core.config import DataParams, Params
from core.errors import DeepGuardError
from core.feedback import ACCEPTED, REJECTED, STATUSES, FeedbackError, FeedbackItem, FeedbackStore
from core.imaging import ImageError, validate_dataset_image
from stages.sources import feedback_store

log = logging.getLogger(__name__)


class FeedbackCommandError(DeepGuardError):
    """A review command the store refused (unknown id, already decided)."""


def format_items(items: list[FeedbackItem]) -> str:
    """One line per item: id, status, claim, the verdict given and its probability, model version, time."""
    lines = [f"{'id':16}  {'status':8}  claim  verdict    p(fake)  version  ts"]
    lines += [
        f"{item.id[:16]}  {item.status:8}  {item.claimed_label:5}  {item.verdict:9}  "
        f"{item.fake_probability:7.4f}  {item.model_version:7}  {item.ts}"
        for item in items
    ]
    return "\n".join(lines) + "\n"


def unused_because(store: FeedbackStore, item: FeedbackItem, data: DataParams) -> str | None:
    """Why ingest will not train on an accepted item, or None: checked as ingest checks it, at accept time.

    Ingest takes an image only at ``data.image_size`` square RGB (never resized) and only with
    ``data.feedback: include``; otherwise the reviewer's accept silently trains nothing (the data report
    counts it ``rejected`` a pipeline run later).
    """
    try:
        validate_dataset_image(store.image_path(item).read_bytes(), data.image_size)
    except (ImageError, OSError) as exc:
        return f"ingest will reject its image ({exc}; never resized): it will not be trained on"
    if data.feedback != "include":
        return "data.feedback is exclude: no accepted item is trained on until it is include"
    return None


def run(
    command: str,
    item_id: str | None = None,
    status: str | None = None,
    data: DataParams | None = None,
) -> list[FeedbackItem]:
    """Run one review command on the store of this workspace.

    Args:
        command: ``list``, ``accept`` or ``reject``.
        item_id: The item (its id or a unique prefix of 8+ hex digits) for accept and reject.
        status: For list: only items with this status.
        data: The data params: an accepted item ingest will not use is then named (a warning).

    Returns:
        The items listed, or the one item moved.

    Raises:
        FeedbackCommandError: naming the id or status that was wrong.
    """
    store = feedback_store()
    try:
        if command == "list":
            return store.items(status)
        moved = store.move(item_id or "", ACCEPTED if command == "accept" else REJECTED)
    except FeedbackError as exc:
        raise FeedbackCommandError(f"{store.root}: {exc}") from None
    log.info("feedback %s: %s (claimed %s) is now %s", command, moved.id, moved.claimed_label, moved.status)
    if data is not None and moved.status == ACCEPTED and (why := unused_because(store, moved, data)):
        log.warning("feedback accept: %s: %s", moved.id[:16], why)
    return [moved]


def _main(args: argparse.Namespace, params: Params) -> None:
    items = run(args.command, getattr(args, "id", None), getattr(args, "status", None), params.data)
    if args.command == "list":
        sys.stdout.write(format_items(items))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m stages.feedback``."""
    parser = stage_parser("feedback", __doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list the items (oldest first)")
    listing.add_argument("--status", choices=STATUSES, default=None, help="only items with this status")
    for name, verb in (("accept", "accept the claim: the image joins training data"), ("reject", "reject")):
        commands.add_parser(name, help=verb).add_argument("id", help="item id (or a unique 8+ digit prefix)")
    return run_stage("feedback", _main, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
