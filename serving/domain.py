"""Input-domain notes and the verdict policy for uploads unlike the images the model was trained on.

The model saw CIFAKE: 32x32 RGB files, JPEG quality 75 (measured on the archive's quantisation tables).
An upload that differs (resized, not square, transparent, animated, compressed harder, blurred) still gets its
P(FAKE) and its binary ``label`` as before, but a plain-English ``note`` says how it differs, and its
``verdict`` is decided only when P(FAKE) lies beyond the uncertain band's edge by ``margin`` (else UNCERTAIN):
the same score is never silently trusted as much as a native image's. bench/trust_bench.py measures it.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.imaging import InputFacts
from core.labels import UNCERTAIN, verdicts

# CIFAKE's files are JPEG quality 75; a JPEG below this lost detail the model learned from.
MIN_JPEG_QUALITY = 70
# Resized by more than this factor either way (either side) is far from the training images.
FAR_SCALE = 2.0
# Resized by more than this factor either way (either side), an upload is beyond every size the verdict was
# measured on (bench/trust_bench.py enlarges 4x; evaluate's robustness report halves): it gets no decided
# verdict, whatever its score. A phone's 12-megapixel photo is shrunk about 126x to the model's 32x32 input,
# which keeps none of the detail the model learned from; a score past the widened edge still called such a
# photo FAKE.
MAX_DECIDED_SCALE = 4.0
# core.imagestats hf_energy of the model's input below which an image has little fine detail (blurred, or
# enlarged then shrunk back). On the CIFAKE sample's test split about 2 % of native images are below it and
# over 90 % after a 1-pixel Gaussian blur (python bench/trust_bench.py prints the shares).
MIN_FINE_DETAIL = 0.45
# How far beyond the band edge P(FAKE) must be for a noted image to get a decided verdict, in probability
# units. Chosen with bench/trust_bench.py on the full-archive model (degradation-trained, Platt-calibrated;
# docs/benchmarks.md: Confident and wrong): confident-and-wrong on blurred, enlarged and JPEG q50 uploads is
# 1.7 % with the policy off and 1.2 % at 0.05, at 82 % coverage; from 0.13 no noted image is ever decided.
# Never 0 by default: a noted image's verdict must not be silently the same as a native one's. Re-measure for
# another model; 0 switches the policy off.
DEFAULT_MARGIN = 0.05


def domain_notes(facts: InputFacts, size: int, fine_detail: float | None = None) -> list[str]:
    """How an upload differs from the model's training images, one plain-English phrase per difference.

    Args:
        facts: What the upload was before it became the model's input.
        size: The model's input side (the training images' size).
        fine_detail: ``hf_energy`` of the model's input (core.imagestats), None when not measured.

    Returns:
        The phrases; empty for a native image (``size`` x ``size``, not compressed harder than training,
        with the fine detail of a training image).
    """
    notes = []
    width, height = facts.width, facts.height
    if (width, height) != (size, size):
        far = " (far from the training images)" if resize_factor(facts, size) > FAR_SCALE else ""
        if width == height:
            scale = width / size
            how = f"{scale:.3g}x larger" if scale >= 1 else f"{1 / scale:.3g}x smaller"
            notes.append(
                f"resized from {width}x{height} to {size}x{size}, {how} than the training images{far}"
            )
        else:  # each side by its own factor: a 128x4 strip's height is enlarged 8x, its width shrunk 4x
            sides = [_side_change(side, size, name) for side, name in ((width, "width"), (height, "height"))]
            how = " and ".join(change for change in sides if change)
            notes.append(f"resized from {width}x{height} to {size}x{size}, {how}{far}")
    if width != height:
        notes.append(f"not square ({width}x{height}): stretched to a square")
    if facts.had_alpha:
        notes.append("transparent pixels composited on white")
    if facts.animated:  # a TIFF's pages are a scan's or a fax's, not an animation's frames
        pages = facts.format == "TIFF"
        notes.append(
            "multi-page: only the first page was scored"
            if pages
            else "animated: only the first frame was scored"
        )
    if facts.jpeg_quality is not None and facts.jpeg_quality < MIN_JPEG_QUALITY:
        notes.append(
            f"JPEG quality about {facts.jpeg_quality}, more compressed than the training images (75)"
        )
    if facts.grayscale:
        notes.append("no colour (grayscale), and most grey images the model learned from were AI-generated")
    if fine_detail is not None and fine_detail < MIN_FINE_DETAIL:
        notes.append("little fine detail (blurred, smoothed or flat), which the model relies on")
    return notes


def _side_change(side: int, size: int, name: str) -> str:
    """How one side was resized to ``size``: "enlarged 8x in height", "shrunk 4x in width", "" if kept."""
    if side == size:
        return ""
    return f"enlarged {size / side:.3g}x in {name}" if side < size else f"shrunk {side / size:.3g}x in {name}"


def resize_factor(facts: InputFacts, size: int) -> float:
    """The most either side of the upload was resized by to become ``size``, as a factor >= 1.

    Each side counts: the model's input is the upload stretched to a square, so a 128x1 strip's one row is
    enlarged 32x, however close its longer side is to the training images'.
    """
    return max(max(side / size, size / side) for side in (facts.width, facts.height))


def beyond_measured_size(facts: InputFacts, size: int) -> bool:
    """Whether either side was resized by more than ``MAX_DECIDED_SCALE`` either way (never decided)."""
    return resize_factor(facts, size) > MAX_DECIDED_SCALE


def domain_note(facts: InputFacts, size: int, fine_detail: float | None = None) -> str:
    """The ``note`` field: the differences as one sentence, ``""`` for a native image."""
    notes = domain_notes(facts, size, fine_detail)
    if not notes:
        return ""
    if beyond_measured_size(facts, size):
        return f"Unlike the training images: {'; '.join(notes)}. At this size the model gives no verdict."
    return f"Unlike the training images: {'; '.join(notes)}. It gets a verdict only for a score near 0 or 1."


def domain_verdict(
    probability: float,
    bands: tuple[float, float],
    facts: InputFacts,
    size: int,
    margin: float,
    fine_detail: float | None = None,
) -> str:
    """The served verdict: the band's, with both edges pushed out by ``margin`` for a noted image.

    The one place the domain policy lives: a native image gets :func:`core.labels.verdicts` of the bands;
    an image with any note is REAL only at or below ``real_below - margin`` and FAKE only at or above
    ``fake_above + margin``, else UNCERTAIN; an image resized by more than ``MAX_DECIDED_SCALE`` is always
    UNCERTAIN. An empty band's edge lies outside [0, 1] and the margin only pushes it further out: that side
    decides nothing either way.

    Args:
        probability: The calibrated P(FAKE).
        bands: ``(real_below, fake_above)`` of the served model (``ModelMetadata.bands``).
        facts: The upload's facts.
        size: The model's input side.
        margin: How much clearer a noted image's score must be (0: no policy, the size limit included).
        fine_detail: ``hf_energy`` of the model's input, None when not measured.

    Returns:
        REAL, FAKE or UNCERTAIN.
    """
    real_below, fake_above = bands
    if margin > 0 and beyond_measured_size(facts, size):
        return UNCERTAIN
    if domain_notes(facts, size, fine_detail):
        real_below, fake_above = real_below - margin, fake_above + margin
    return verdicts([probability], real_below, fake_above)[0]


def domain_verdicts(
    probabilities: Sequence[float],
    bands: tuple[float, float],
    facts: Sequence[InputFacts],
    size: int,
    margin: float,
    fine_detail: Sequence[float] | None = None,
) -> list[str]:
    """:func:`domain_verdict` of every image of a request."""
    details = [None] * len(facts) if fine_detail is None else [float(d) for d in fine_detail]
    return [
        domain_verdict(float(p), bands, fact, size, margin, detail)
        for p, fact, detail in zip(probabilities, facts, details, strict=True)
    ]
