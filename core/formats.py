"""The image formats DeepGuard reads, known by a file's first bytes (standard library only: the web app)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFormat:
    """One format read everywhere: ingest, evaluation sets, the predictor, the web app and feedback."""

    name: str  # Pillow's format name
    label: str  # as people write it
    suffixes: tuple[str, ...]  # file name suffixes, without the dot; a stored copy gets the first
    signatures: tuple[bytes, ...] = ()  # the file's first bytes; WebP and AVIF are containers (see sniff)


JPEG = ImageFormat("JPEG", "JPEG", ("jpg", "jpeg"), (b"\xff\xd8\xff",))
PNG = ImageFormat("PNG", "PNG", ("png",), (b"\x89PNG\r\n\x1a\n",))
WEBP = ImageFormat("WEBP", "WebP", ("webp",))
AVIF = ImageFormat("AVIF", "AVIF", ("avif",))
GIF = ImageFormat("GIF", "GIF", ("gif",), (b"GIF87a", b"GIF89a"))
BMP = ImageFormat("BMP", "BMP", ("bmp",), (b"BM",))
TIFF = ImageFormat("TIFF", "TIFF", ("tif", "tiff"), (b"II*\x00", b"MM\x00*"))
FORMATS = (JPEG, PNG, WEBP, AVIF, GIF, BMP, TIFF)
# What a user is told they may upload: "JPEG, PNG, WebP, AVIF, GIF, BMP or TIFF".
ACCEPTED_FORMATS = f"{', '.join(f.label for f in FORMATS[:-1])} or {FORMATS[-1].label}"
# The format recorded for a V2 pixel tensor (no file, so no format of Pillow's): metrics and records carry it.
RAW_FORMAT = "RAW"
# Every format a served record can name: what params.yaml monitoring.in_domain_formats may list.
RECORDED_FORMATS = (*(f.name for f in FORMATS), RAW_FORMAT)
# An AVIF file starts with an ISO-BMFF `ftyp` box whose major or a compatible brand is one of these (a phone's
# HEIC photo has the same box with `heic` brands: Pillow does not read it, so it is not sniffed as AVIF).
_AVIF_BRANDS = (b"avif", b"avis")


def _is_avif(data: bytes) -> bool:
    if data[4:8] != b"ftyp":
        return False
    box_end = min(int.from_bytes(data[:4], "big"), len(data))
    # The box: size, "ftyp", the major brand, a minor version, then compatible brands, 4 bytes each.
    brands = [data[8:12], *(data[i : i + 4] for i in range(16, box_end - 3, 4))]
    return any(brand in _AVIF_BRANDS for brand in brands)


def sniff(data: bytes) -> ImageFormat | None:
    """The format a file's first bytes name, or None when it is not one DeepGuard reads.

    Args:
        data: The file, or at least its first 64 bytes.

    Returns:
        The format; the file may still be corrupt (only decoding can tell).
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    if _is_avif(data):
        return AVIF
    return next((f for f in FORMATS if any(data.startswith(s) for s in f.signatures)), None)
