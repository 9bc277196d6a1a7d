"""User feedback: the store, the web route over real HTTP, the review command and ingest's feedback source."""

from __future__ import annotations

import errno
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from werkzeug.serving import make_server
from workspace import free_port, make_workspace, run_stage, stage_env

from core import feedback
from core.config import load_params
from core.feedback import ACCEPTED, PENDING, REJECTED, FeedbackConflictError, FeedbackError, FeedbackStore
from core.formats import FORMATS
from core.labels import CLASS_NAMES, VERDICTS
from core.pipeline import ARCHIVE, DATA_REPORT, RAW_DIR
from flask_app import create_app
from flask_app.feedback import TokenBucket
from stages import sources
from stages.ingest import ingest
from stages.model_card import feedback_summary

REPO = Path(__file__).resolve().parents[1]


def image_file(seed: int, size: int = 32, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def submit(store: FeedbackStore, image: bytes, claim: str = "FAKE") -> feedback.FeedbackItem:
    item, _ = store.submit(image, claim, "REAL", 0.2, "3")
    return item


# --- the store -------------------------------------------------------------------------------------------


def test_store_writes_image_and_record_and_deduplicates_by_hash(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    data = image_file(1)
    item, created = store.submit(data, "FAKE", "REAL", "0.25", "7")
    assert created and item.status == PENDING and item.suffix == "png" and item.size == len(data)
    assert (tmp_path / "pending" / f"{item.id}.png").read_bytes() == data
    record = json.loads((tmp_path / "pending" / f"{item.id}.json").read_text())
    assert record["claimed_label"] == "FAKE" and record["verdict"] == "REAL"
    assert record["fake_probability"] == 0.25 and record["model_version"] == "7" and record["ts"]
    again, created = store.submit(data, "FAKE", "UNCERTAIN", 0.6, "8")
    assert not created and again == item, "the same image and claim is one item"
    with pytest.raises(FeedbackConflictError, match=r"already reported as FAKE \(pending\)"):
        store.submit(data, "REAL", "FAKE", 0.9, "8")
    store.move(item.id[:10], ACCEPTED)
    _, created = store.submit(data, "FAKE", "REAL", 0.2, "7")
    assert not created, "an image already reviewed is not queued again"
    assert store.count(PENDING) == 0 and store.count(ACCEPTED) == 1


def test_concurrent_opposite_claims_of_one_image_record_one_and_refuse_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two web workers take the same image at once, one claimed FAKE and one REAL: both find no item, both
    # write its image (held here until both have), then both write its record.
    both_checked = threading.Barrier(2, timeout=10)
    write = feedback._write_atomic

    def write_when_both_checked(path: Path, data: bytes) -> None:
        if path.suffix != ".json":
            both_checked.wait()
        write(path, data)

    monkeypatch.setattr(feedback, "_write_atomic", write_when_both_checked)
    store, data, outcomes = FeedbackStore(tmp_path), image_file(5), {}

    def claim(label: str) -> None:
        try:
            outcomes[label] = store.submit(data, label, "UNCERTAIN", 0.5, "3")
        except FeedbackConflictError as exc:
            outcomes[label] = exc

    threads = [threading.Thread(target=claim, args=(label,)) for label in ("FAKE", "REAL")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    (stored,) = store.items()
    loser = "REAL" if stored.claimed_label == "FAKE" else "FAKE"
    assert outcomes[stored.claimed_label] == (stored, True)
    assert isinstance(outcomes[loser], FeedbackConflictError), (
        "the overwritten claim was told it was recorded"
    )
    assert not list((tmp_path / PENDING).glob(".*.tmp")), "no temporary file is left behind"


def test_a_volume_without_hard_links_still_records_feedback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_hard_links(src: str, dst: str) -> None:  # as an SMB share answers
        raise OSError(errno.EPERM, "Operation not permitted", dst)

    monkeypatch.setattr(feedback.os, "link", no_hard_links)
    store, data = FeedbackStore(tmp_path), image_file(6)
    item, created = store.submit(data, "FAKE", "REAL", 0.2, "3")
    assert created and store.items() == [item]
    assert store.submit(data, "FAKE", "REAL", 0.2, "3") == (item, False)
    with pytest.raises(FeedbackConflictError):
        store.submit(data, "REAL", "REAL", 0.2, "3")
    assert not list((tmp_path / PENDING).glob(".*.tmp")), "no temporary file is left behind"


@pytest.mark.parametrize(("fmt", "suffix"), [(f.name, f.suffixes[0]) for f in FORMATS])
def test_every_format_the_page_scores_can_be_reported(tmp_path: Path, fmt: str, suffix: str) -> None:
    # The web app and the predictor take TIFF; the store refused it, so "This verdict is wrong" on a scored
    # TIFF answered "Not sent: image: not a JPEG, PNG, WebP, GIF or BMP file".
    item = submit(FeedbackStore(tmp_path), image_file(2, fmt=fmt))
    assert item.suffix == suffix and (tmp_path / "pending" / f"{item.id}.{suffix}").is_file()


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("image", {"image": b""}),
        ("image", {"image": b"%PDF-1.4 not an image"}),
        ("claimed_label", {"claimed_label": "fake"}),
        ("verdict", {"verdict": "MAYBE"}),
        ("fake_probability", {"fake_probability": "high"}),
        ("fake_probability", {"fake_probability": 1.5}),
        ("fake_probability", {"fake_probability": -0.1}),
        ("fake_probability", {"fake_probability": "nan"}),
        ("model_version", {"model_version": ""}),
        ("model_version", {"model_version": "1" * (feedback.MAX_TEXT + 1)}),
        ("model_version", {"model_version": "1\nforged log line"}),
    ],
)
def test_store_refuses_bad_fields_naming_them(tmp_path: Path, field: str, kwargs: dict) -> None:
    good = {
        "image": image_file(2),
        "claimed_label": "REAL",
        "verdict": "FAKE",
        "fake_probability": 0.8,
        "model_version": "1",
    }
    with pytest.raises(FeedbackError) as caught:
        FeedbackStore(tmp_path).submit(**{**good, **kwargs})
    assert caught.value.field == field and str(caught.value).startswith(f"{field}: ")
    assert not (tmp_path / "pending").exists() or not any((tmp_path / "pending").iterdir())


def test_store_caps_size_and_pending_count(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path, max_image_bytes=5000, max_pending=2)
    with pytest.raises(feedback.FeedbackTooLargeError) as caught:
        submit(store, image_file(3, size=64))  # ~12 KB PNG of noise
    assert caught.value.status == 413
    exact = image_file(4)  # an image of exactly the cap is stored, one byte over it is refused
    assert submit(FeedbackStore(tmp_path / "at", max_image_bytes=len(exact)), exact).size == len(exact)
    with pytest.raises(feedback.FeedbackTooLargeError):
        submit(FeedbackStore(tmp_path / "over", max_image_bytes=len(exact) - 1), exact)
    first, second = submit(store, image_file(4)), submit(store, image_file(5))
    with pytest.raises(feedback.FeedbackFullError):
        submit(store, image_file(6))
    store.move(first.id, REJECTED)
    assert submit(store, image_file(6)).status == PENDING, "reviewing frees a place"
    assert {i.id for i in store.items(PENDING)} == {
        second.id,
        feedback.hashlib.sha256(image_file(6)).hexdigest(),
    }


def test_move_finds_an_image_left_behind_by_an_interrupted_move(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    item = submit(store, image_file(7))
    (tmp_path / ACCEPTED).mkdir()
    (tmp_path / PENDING / f"{item.id}.png").rename(tmp_path / ACCEPTED / f"{item.id}.png")  # killed here
    moved = store.move(item.id, ACCEPTED)
    assert store.image_path(moved).read_bytes() == image_file(7)
    with pytest.raises(FeedbackError, match="already accepted"):
        store.move(item.id, ACCEPTED)


@pytest.mark.parametrize(
    "edit",
    [
        lambda record: '{"id": "cut short',
        lambda record: json.dumps({**record, "note": "looked at it"}),
        lambda record: json.dumps({**record, "status": ACCEPTED}),
        lambda record: json.dumps({**record, "claimed_label": "fake"}),
        lambda record: json.dumps({**record, "id": "0" * 64}),
        lambda record: json.dumps(list(record)),
    ],
    ids=["not-json", "unknown-key", "status-key", "bad-claim", "other-id", "not-an-object"],
)
def test_a_hand_edited_record_is_named_not_a_traceback(tmp_path: Path, edit) -> None:
    """A record edited by hand (or cut short) made list, accept, submit and ingest die with a traceback."""
    store = FeedbackStore(tmp_path)
    broken, fine = submit(store, image_file(8)), submit(store, image_file(9))
    path = tmp_path / PENDING / f"{broken.id}.json"
    path.write_text(edit(json.loads(path.read_text())))
    for call in (store.items, lambda: store.get(broken.id[:8]), lambda: submit(store, image_file(8))):
        with pytest.raises(FeedbackError, match=f"{PENDING}/{broken.id}.json") as raised:
            call()
        assert raised.value.status == 500, "the store is broken, not the request"
    store.move(fine.id, ACCEPTED)  # another item's record is not read to review this one
    (tmp_path / ACCEPTED / f"{broken.id}.png").write_bytes(image_file(8))
    path.rename(tmp_path / ACCEPTED / path.name)
    with pytest.raises(sources.SourceError, match=f"{ACCEPTED}/{broken.id}.json"):
        list(sources.feedback_entries(store))


def test_an_item_whose_image_was_deleted_is_named_not_a_traceback(tmp_path: Path) -> None:
    """accept and ingest died with FileNotFoundError once an item's image had been deleted by hand."""
    store = FeedbackStore(tmp_path)
    pending, accepted = submit(store, image_file(11)), submit(store, image_file(12))
    store.move(accepted.id, ACCEPTED)
    (tmp_path / PENDING / f"{pending.id}.png").unlink()
    (tmp_path / ACCEPTED / f"{accepted.id}.png").unlink()
    with pytest.raises(FeedbackError, match=f"{PENDING}/{pending.id}.png is missing") as raised:
        store.move(pending.id, ACCEPTED)
    assert raised.value.status == 500 and store.get(pending.id).status == PENDING
    with pytest.raises(sources.SourceError, match=f"{accepted.id}.png"):
        list(sources.feedback_entries(store))


def test_review_command_names_a_hand_edited_record_in_one_line(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    store = FeedbackStore(root / "monitoring" / "feedback")
    item = submit(store, image_file(10))
    (root / "monitoring" / "feedback" / PENDING / f"{item.id}.json").write_text('{"id": ')
    failed = run_stage("feedback", root, stage_env(root), "list", check=False)
    assert failed.returncode == 2
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("stages.feedback: error:") and f"{item.id}.json" in line, failed.stderr


def test_store_agrees_with_core_labels() -> None:
    # The web image's copy of core (standard library only): tests/test_layout.py.
    assert feedback.CLAIMS == CLASS_NAMES and feedback.VERDICTS == VERDICTS


# --- POST /api/feedback over HTTP --------------------------------------------------------------------------


@pytest.fixture()
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The web app on a free port (werkzeug's server, real HTTP); its feedback folder."""
    folder = tmp_path / "feedback"
    app = create_app({"FEEDBACK_DIR": str(folder), "FEEDBACK_BURST": 3, "FEEDBACK_PER_MINUTE": 1.0})
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", folder
    server.shutdown()
    thread.join(timeout=10)


def post(url: str, data: bytes | None, **fields: str) -> requests.Response:
    form = {"claimed_label": "FAKE", "verdict": "REAL", "fake_probability": "0.31", "model_version": "4"}
    form.update(fields)
    files = {"image": ("upload.png", data, "image/png")} if data is not None else None
    return requests.post(
        f"{url}/api/feedback", data={k: v for k, v in form.items() if v}, files=files, timeout=30
    )


def test_feedback_route_stores_the_item_and_names_bad_fields(web: tuple[str, Path]) -> None:
    url, folder = web
    response = post(url, image_file(10))
    assert response.status_code == 201, response.text
    item_id = response.json()["id"]
    assert response.json()["created"] is True
    record = json.loads((folder / "pending" / f"{item_id}.json").read_text())
    assert record["claimed_label"] == "FAKE" and record["fake_probability"] == 0.31
    assert record["verdict"] == "REAL" and record["model_version"] == "4", "what the service answered"
    assert (folder / "pending" / f"{item_id}.png").read_bytes() == image_file(10)
    assert post(url, image_file(10)).json() == {"id": item_id, "status": "pending", "created": False}
    missing = post(url, None)
    assert missing.status_code == 400 and "image" in missing.json()["error"]
    # The bucket (3) is spent: the next request is refused, whatever it holds, until a token is back.
    limited = post(url, image_file(11), claimed_label="maybe")
    assert limited.status_code == 429 and "try again" in limited.json()["error"]
    assert int(limited.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({"claimed_label": "maybe"}, 400, "claimed_label"),
        ({"verdict": ""}, 400, "verdict: missing"),
        ({"fake_probability": "2"}, 400, "fake_probability"),
        ({"model_version": ""}, 400, "model_version"),
    ],
)
def test_feedback_route_refuses_bad_input(
    web: tuple[str, Path], fields: dict, status: int, words: str
) -> None:
    response = post(web[0], image_file(12), **fields)
    assert response.status_code == status and words in response.json()["error"], response.text
    assert not (web[1] / "pending").exists() or not list((web[1] / "pending").iterdir())


@pytest.mark.parametrize("config", [{}, {"MAX_CONTENT_LENGTH": 20_000}], ids=["default", "configured"])
def test_feedback_takes_any_file_the_page_takes_and_refuses_a_larger_one_with_413(
    tmp_path: Path, config: dict
) -> None:
    """Feedback had its own 5 MiB cap under the page's 10 MiB upload limit: a 7 MiB photo was scored, and
    "this verdict is wrong" on it answered 413. The page's limit (MAX_CONTENT_LENGTH) is now the one cap."""
    app = create_app({"FEEDBACK_DIR": str(tmp_path), **config})
    limit = app.config["MAX_CONTENT_LENGTH"]
    head = image_file(13)[:20]  # a PNG signature: the store checks the signature, the predictor decodes

    def report(size: int) -> Any:
        with app.test_client() as client:  # the size checks only; HTTP is covered above
            return client.post(
                "/api/feedback",
                data={
                    "image": (io.BytesIO(head + bytes(size - len(head))), "x.png"),
                    "claimed_label": "REAL",
                    "verdict": "FAKE",
                    "fake_probability": "0.9",
                    "model_version": "1",
                },
            )

    assert report(limit).status_code == 201, "a file of exactly the page's limit"
    response = report(limit + 1)
    assert response.status_code == 413 and "image" in response.get_json()["error"]


def test_feedback_awaiting_review_is_capped_in_bytes_too(tmp_path: Path) -> None:
    """Only the count (10,000) was capped: items of the page's 10 MiB limit could fill 100 GiB of the volume
    the pipeline's workspace and the predictor's records live on. Past the byte budget a report is a 507, and
    reviewing frees room."""
    app = create_app(
        {"FEEDBACK_DIR": str(tmp_path), "FEEDBACK_BURST": 10, "FEEDBACK_MAX_PENDING_BYTES": 30_000}
    )
    client = app.test_client()

    def report(seed: int) -> Any:
        return client.post(
            "/api/feedback",
            data={
                "image": (io.BytesIO(image_file(seed, size=64)), "x.png"),  # ~12 KB PNG of noise
                "claimed_label": "REAL",
                "verdict": "FAKE",
                "fake_probability": "0.9",
                "model_version": "1",
            },
        )

    first, second = report(20), report(21)
    assert first.status_code == second.status_code == 201
    full = report(22)
    assert full.status_code == 507, full.get_data(as_text=True)
    assert "waiting for review" in full.get_json()["error"]
    assert len(list((tmp_path / PENDING).glob("*.png"))) == 2, "nothing of the refused item is stored"
    FeedbackStore(tmp_path).move(first.get_json()["id"], REJECTED)
    assert report(22).status_code == 201, "reviewing frees room"


def test_the_other_claim_on_a_reported_image_is_a_409_naming_the_one_on_record(tmp_path: Path) -> None:
    client = create_app({"FEEDBACK_DIR": str(tmp_path)}).test_client()

    def claim(label: str) -> Any:
        form = {
            "claimed_label": label,
            "verdict": "UNCERTAIN",
            "fake_probability": "0.5",
            "model_version": "4",
        }
        return client.post("/api/feedback", data={**form, "image": (io.BytesIO(image_file(40)), "a.png")})

    assert claim("FAKE").status_code == 201
    conflict = claim("REAL")
    assert conflict.status_code == 409, conflict.get_json()
    assert conflict.get_json()["error"] == "claimed_label: this image was already reported as FAKE (pending)."


def test_the_other_claim_on_a_rejected_image_is_reviewed_anew_not_refused(tmp_path: Path) -> None:
    """A reviewer rejected 'this is FAKE' for an image (it is REAL); when a later model calls it FAKE and a
    user says REAL, agreeing with the reviewer, the page answered 409 'already reported as FAKE (rejected)'
    and the correction could never be made. It is now pending again with the new claim."""
    client = create_app({"FEEDBACK_DIR": str(tmp_path)}).test_client()
    store = FeedbackStore(tmp_path)

    def claim(label: str, version: str) -> Any:
        form = {
            "claimed_label": label,
            "verdict": "UNCERTAIN",
            "fake_probability": "0.5",
            "model_version": version,
        }
        return client.post("/api/feedback", data={**form, "image": (io.BytesIO(image_file(41)), "a.png")})

    first = claim("FAKE", "4").get_json()
    store.move(first["id"], REJECTED)
    again = claim("REAL", "5")
    assert again.status_code == 201, again.get_json()
    assert again.get_json() == {"id": first["id"], "status": PENDING, "created": True}
    item = store.get(first["id"][:12])
    assert (item.status, item.claimed_label, item.model_version) == (PENDING, "REAL", "5")
    assert store.image_path(item).read_bytes() == image_file(41)
    assert store.items(REJECTED) == [] and not list((tmp_path / REJECTED).iterdir())
    # Accepted, the decision stands: the other claim is still a conflict.
    store.move(item.id, ACCEPTED)
    conflict = claim("FAKE", "5")
    assert (
        conflict.status_code == 409 and "already reported as REAL (accepted)" in conflict.get_json()["error"]
    )


def test_two_images_in_one_feedback_request_are_refused_and_neither_is_stored(tmp_path: Path) -> None:
    """The first was stored and the second dropped without a word: a client reporting two wrong verdicts in
    one request believed both recorded."""
    client = create_app({"FEEDBACK_DIR": str(tmp_path)}).test_client()
    form = {"claimed_label": "FAKE", "verdict": "REAL", "fake_probability": "0.1", "model_version": "4"}
    files = [(io.BytesIO(image_file(40)), "a.png"), (io.BytesIO(image_file(41)), "b.png")]
    response = client.post("/api/feedback", data={**form, "image": files})
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == "image: 2 files were uploaded; send one item per request."
    assert FeedbackStore(tmp_path).items() == []


@pytest.mark.parametrize(("hops", "limited"), [(0, True), (1, False)])
def test_behind_a_proxy_each_client_has_its_own_feedback_limit(
    tmp_path: Path, hops: int, limited: bool
) -> None:
    """Through an Ingress every request comes from the proxy; WEB_PROXY_HOPS reads the client's address."""
    app = create_app({"FEEDBACK_DIR": str(tmp_path), "FEEDBACK_BURST": 1, "WEB_PROXY_HOPS": hops})
    form = {"claimed_label": "FAKE", "verdict": "REAL", "fake_probability": "0.31", "model_version": "4"}
    statuses = [
        app.test_client()
        .post(
            "/api/feedback",
            data={**form, "image": (io.BytesIO(image_file(30 + client)), "upload.png")},
            headers={"X-Forwarded-For": f"203.0.113.{client}"},
            environ_base={"REMOTE_ADDR": "10.0.0.9"},  # the ingress controller's pod
        )
        .status_code
        for client in range(3)
    ]
    assert statuses == ([201, 429, 429] if limited else [201, 201, 201])


def test_a_refusal_for_too_much_feedback_never_says_try_again_in_0_s(tmp_path: Path) -> None:
    """Under a second to wait is still "1 s", as the Retry-After header says, never "try again in 0 s"."""
    app = create_app({"FEEDBACK_DIR": str(tmp_path), "FEEDBACK_BURST": 1, "FEEDBACK_PER_MINUTE": 600.0})
    form = {"claimed_label": "FAKE", "verdict": "REAL", "fake_probability": "0.31", "model_version": "4"}
    client = app.test_client()
    responses = [
        client.post("/api/feedback", data={**form, "image": (io.BytesIO(image_file(40 + i)), "a.png")})
        for i in range(2)
    ]
    assert [response.status_code for response in responses] == [201, 429]
    limited = responses[1]
    assert limited.headers["Retry-After"] == "1"
    assert limited.get_json()["error"].endswith("try again in 1 s.")


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(per_minute=6.0, burst=2, clock=lambda: now[0])
    assert bucket.take("a") == 0 and bucket.take("a") == 0
    assert bucket.take("a") == pytest.approx(10.0)
    assert bucket.take("b") == 0, "clients have their own buckets"
    now[0] = 10.0
    assert bucket.take("a") == 0
    now[0] = 1000.0  # a long idle fills the bucket to its size, not beyond: still two at once
    assert [bucket.take("a") for _ in range(3)] == [0, 0, pytest.approx(10.0)]


def test_token_bucket_forgets_the_least_recently_seen_client_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The buckets are capped (MAX_CLIENTS) so that many addresses cannot fill the memory; nothing held the
    cap or its order: forgetting the newest client instead would give every new address a full burst."""
    monkeypatch.setattr("flask_app.feedback.MAX_CLIENTS", 3)
    bucket = TokenBucket(per_minute=6.0, burst=1, clock=lambda: 0.0)
    for client in ("old", "limited", "x"):
        assert bucket.take(client) == 0
    assert bucket.take("limited") > 0  # seen again: now the most recent but one
    assert bucket.take("y") == 0  # a fourth client: "old", the least recently seen, is forgotten
    assert bucket.take("y") > 0, "the newest client is remembered"
    assert bucket.take("limited") > 0, "a recently seen client is remembered"
    assert bucket.take("old") == 0, "the least recently seen client was forgotten: a full bucket again"


# --- python -m stages.feedback -----------------------------------------------------------------------------


def test_review_command_lists_accepts_rejects_with_one_line_errors(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    env = stage_env(root)
    store = FeedbackStore(root / "monitoring" / "feedback")
    first, second = submit(store, image_file(20)), submit(store, image_file(21), "REAL")
    listed = run_stage("feedback", root, env, "list")
    assert first.id[:16] in listed.stdout and second.id[:16] in listed.stdout
    run_stage("feedback", root, env, "accept", first.id[:12])
    run_stage("feedback", root, env, "reject", second.id)
    assert [i.id for i in store.items(ACCEPTED)] == [first.id]
    assert [i.id for i in store.items(REJECTED)] == [second.id]
    assert second.id[:16] not in run_stage("feedback", root, env, "list", "--status", "accepted").stdout
    for args, words in (
        (("accept", "0" * 12), "no item with id"),
        (("reject", second.id), "already rejected"),
    ):
        failed = run_stage("feedback", root, env, *args, check=False)
        assert failed.returncode == 2
        (line,) = failed.stderr.strip().splitlines()
        assert line.startswith("stages.feedback: error:") and words in line, failed.stderr


def test_accepting_an_item_ingest_will_not_train_on_says_so(tmp_path: Path) -> None:
    """A reviewer accepting a phone photo someone flagged on the page (any size the page scores) was told
    'is now accepted', and the next pipeline run trained on nothing: ingest takes feedback only at
    data.image_size and never resizes, which only the data report said, a run later. So with
    data.feedback: exclude. The accept now says why the item will not be used, when it will not."""
    root = make_workspace(tmp_path / "ws")
    env = stage_env(root)
    store = FeedbackStore(root / "monitoring" / "feedback")
    photo, native = submit(store, image_file(40, size=64)), submit(store, image_file(41), "REAL")
    include = ("--set", "data.feedback=include")
    accepted = run_stage("feedback", root, env, *include, "accept", photo.id)
    assert f"feedback accept: {photo.id[:16]}: ingest will reject its image (size 64x64, expected 32x32" in (
        accepted.stdout
    ), accepted.stdout
    assert "WARNING" in accepted.stdout
    assert "WARNING" not in run_stage("feedback", root, env, *include, "accept", native.id).stdout
    store.move(native.id, PENDING)
    excluded = run_stage("feedback", root, env, "--set", "data.feedback=exclude", "accept", native.id)
    assert "data.feedback is exclude: no accepted item is trained on" in excluded.stdout, excluded.stdout
    # A warning, not a refusal: the decision stays the reviewer's.
    assert {i.id for i in store.items(ACCEPTED)} == {photo.id, native.id}


# --- ingest: accepted feedback as a data source -------------------------------------------------------------


def dataset_zip(archive: Path) -> dict[str, bytes]:
    """Write a dataset of three images per split and class to ``archive``; return its files by name."""
    dataset = {
        f"{split}/{cls}/{i}.png": image_file(hash((split, cls, i)) % 2**32)
        for split in ("train", "test")
        for cls in ("REAL", "FAKE")
        for i in range(3)
    }
    with zipfile.ZipFile(archive, "w") as out:
        for name, data in dataset.items():
            out.writestr(name, data)
    return dataset


def test_ingest_merges_accepted_feedback_validated_and_deduplicated(tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    dataset = dataset_zip(archive)
    store = FeedbackStore(tmp_path / "feedback")
    new = submit(store, image_file(30), "FAKE")  # kept, as FAKE
    big = submit(store, image_file(31, size=64), "REAL")  # not native size: rejected, never resized
    dup = submit(store, dataset["train/REAL/0.png"], "REAL")  # already in train: a duplicate
    leak = submit(store, dataset["test/FAKE/1.png"], "FAKE")  # a test image: would leak into train
    pending = submit(store, image_file(32), "REAL")  # not reviewed: never used
    for item in (new, big, dup, leak):
        store.move(item.id, ACCEPTED)
    source = sources.Source("local", str(archive), "test", "test")

    def run(setting: str) -> dict:
        params = load_params(REPO / "params.yaml", [f"data.feedback={setting}"]).data
        entries = sources.iter_entries(archive)
        if params.feedback == "include":
            entries = sources.with_feedback(entries, sources.feedback_entries(store))
        return ingest(entries, params, source, tmp_path / setting)

    report = run("include")
    assert report["feedback"] == {
        "seen": 4,
        "kept": 1,
        "rejected": 1,
        "duplicate": 1,
        "test_in_train": 1,
        "capped": 0,
    }
    assert report["kept"]["train"] == {"FAKE": 4, "REAL": 3}
    # The model card of a model trained on this data says so (stages/model_card.py reads this report).
    assert (
        feedback_summary(report["feedback"])
        == "1 of 4 accepted images (left out: rejected 1, duplicate 1, test image 1)"
    )
    with zipfile.ZipFile(tmp_path / "include" / ARCHIVE) as kept:
        names = kept.namelist()
    assert f"train/FAKE/{new.id[:16]}.png" in names
    assert not any(pending.id[:16] in name for name in names)
    assert report["test_in_train"] == {"train": {"FAKE": 1}}, "the feedback copy goes, the test image stays"
    assert report["kept"]["test"] == {"FAKE": 3, "REAL": 3}
    excluded = run("exclude")
    assert excluded["feedback"] is None and excluded["kept"]["train"] == {"FAKE": 3, "REAL": 3}


def test_feedback_left_out_by_sample_per_class_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Feedback is read after the dataset, so data.sample_per_class at or under the dataset's count dropped
    every accepted item as "capped" with no more than a count in the data report; now a warning says so."""
    archive = tmp_path / "data.zip"
    dataset_zip(archive)
    store = FeedbackStore(tmp_path / "feedback")
    for seed, claim in ((50, "FAKE"), (51, "REAL")):
        store.move(submit(store, image_file(seed), claim).id, ACCEPTED)
    params = load_params(REPO / "params.yaml", ["data.feedback=include", "data.sample_per_class=3"]).data
    entries = sources.with_feedback(sources.iter_entries(archive), sources.feedback_entries(store))
    with caplog.at_level("WARNING", logger="stages.ingest"):
        report = ingest(entries, params, sources.Source("local", str(archive), "t", "t"), tmp_path / "out")
    assert report["feedback"]["capped"] == 2 and report["kept"]["train"] == {"FAKE": 3, "REAL": 3}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "ingest: 2 accepted feedback images left out: data.sample_per_class (3) was already reached by the "
        "dataset's images of their class; unset or raise it to train on them"
    ]


def test_ingest_stage_reads_feedback_from_the_monitoring_dir(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    store = FeedbackStore(tmp_path / "mon" / "feedback")
    accepted = submit(store, image_file(40), "REAL")
    store.move(accepted.id, ACCEPTED)
    env = stage_env(root, DEEPGUARD_MONITORING_DIR=str(tmp_path / "mon"))
    args = (
        "--set",
        "data.source=synthetic",
        "--set",
        "data.synthetic_per_class=10",
        "--set",
        "data.feedback=include",
    )
    run_stage("ingest", root, env, *args)
    report = json.loads((root / DATA_REPORT).read_text())
    assert report["feedback"]["kept"] == 1
    marker = json.loads((root / "data" / "source.json").read_text())
    assert marker["feedback"] == sources.feedback_fingerprint(store)
    with zipfile.ZipFile(root / RAW_DIR / ARCHIVE) as kept:
        assert f"train/REAL/{accepted.id[:16]}.png" in kept.namelist()
