"""Atomic writes: a temporary sibling, then a rename, so a killed stage never leaves half an output."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import DeepGuardError
from core.pipeline import missing_input, writer_of

log = logging.getLogger(__name__)


class InvalidInputError(DeepGuardError, ValueError):
    """A stage's input is there but not what its writer wrote (cut short, edited by hand): named with it."""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(target: Path) -> list[Path]:
    """Remove what a killed writer of ``target`` left beside it; put back a previous output moved aside.

    Only this target's own names are touched (``.<name>.<8 random characters>.tmp`` and ``.<name>.old``).
    A workspace has one writer per output at a time (DVC locks the repository, an Airflow run runs its
    stages in turn), so whatever of ours exists before we start belongs to a writer that died.

    Returns:
        The paths removed.
    """
    old = target.with_name(f".{target.name}.old")
    if old.exists() and not target.exists():
        # Killed between the two renames of a folder swap: the previous output is whole, restore it.
        old.rename(target)
        log.warning("restored %s from %s, left by an interrupted write", target, old.name)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    stale = [old] if old.exists() else []
    if target.parent.is_dir():
        stale += sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))
    for path in stale:
        _remove(path)
        log.warning("removed %s, left by an interrupted write of %s", path, target)
    return stale


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` in one rename.

    Works for files and folders: the caller creates whatever it wants at the yielded path.
    On an exception the temporary path is removed and ``target`` keeps its previous content; what a killed
    process could not remove is removed by the next write of the same target (:func:`clean_stale`).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.rmdir()
    try:
        yield tmp
        if tmp.is_dir() and target.is_dir():
            # A folder cannot replace a folder in one rename: move the old one aside first.
            old = target.with_name(f".{target.name}.old")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        _remove(tmp)


def write_json(path: Path, data: Any, *, sort_keys: bool = True) -> None:
    """Write ``data`` as indented, strict JSON, atomically.

    Strict: JSON has no NaN or infinity (Python would write ``NaN``, which jq, JavaScript's ``JSON.parse``
    and Go refuse), so a value that does not exist is None (null) where it is computed, and a non-finite
    float raises ValueError naming the file: the previous file stays, and no reader ever sees the token.

    Keys are sorted (stable diffs of reports) unless ``sort_keys`` is False: a document whose order is
    meant for a reader (the model card) keeps it.
    """
    try:
        text = json.dumps(data, indent=2, sort_keys=sort_keys, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"{path}: not written, {exc} (NaN or infinity: write None for no value)") from None
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`write_json`.

    Raises:
        MissingInputError: when the file is not there, naming the stage that writes it (a stage run alone).
        InvalidInputError: when it is not JSON, naming it and the stage that writes it.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise missing_input(path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        stage = writer_of(path)
        again = f"; the {stage.name} stage writes it: run `python -m {stage.module}` again" if stage else ""
        where = f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
        raise InvalidInputError(f"{path}: not valid JSON ({where}){again}") from None
