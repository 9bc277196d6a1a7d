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
# The brands of HEIF files that are not AVIF: a phone's HEIC photo (`heic`, `mif1`, ...).
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1")


def _ftyp_brands(data: bytes) -> list[bytes]:
    """The brands of an ISO-BMFF file's leading `ftyp` box, or [] when the file does not start with one."""
    if data[4:8] != b"ftyp":
        return []
    box_end = min(int.from_bytes(data[:4], "big"), len(data))
    # The box: size, "ftyp", the major brand, a minor version, then compatible brands, 4 bytes each.
    return [data[8:12], *(data[i : i + 4] for i in range(16, box_end - 3, 4))]


def _is_avif(data: bytes) -> bool:
    return any(brand in _AVIF_BRANDS for brand in _ftyp_brands(data))


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


def unread_kind(data: bytes) -> str | None:
    """What a file DeepGuard does not read is, when it is one people often upload by mistake.

    A refusal that says "IMG_0001.HEIC is a HEIC photo" or "scan.jpg is a PDF document" tells the uploader
    what to change; "not an image" about a file named .jpg does not.

    Args:
        data: A file :func:`sniff` does not know, or at least its first 1,024 bytes.

    Returns:
        A clause that follows "<file name> is", or None when the file is none of these.
    """
    if data.startswith(b"%PDF-"):
        return "a PDF document, not an image"
    if any(brand in _HEIF_BRANDS for brand in _ftyp_brands(data)) and not _is_avif(data):
        return "a HEIC photo (the format iPhones save), which this service does not read"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!doctype svg")) and b"<svg" in head):
        return "an SVG drawing, which this service does not read"
    return None
