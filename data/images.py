"""Image bytes the store accepts: JPEG, of a bounded size and shape, that decodes.

Pick-a-Pic's `jpg_0`/`jpg_1` columns and the store's `images.jpg` hold JPEG bytes, and
the trainer decodes every image it reads. So an import checks each image before it is
stored: its format, declared size and aspect ratio from the header (read without
decoding the pixels: a 633-byte file can declare 12000x12000 pixels, which take 1.5 GB
to decode, and a 4096x1 image is scaled by the trainer to 2,097,152x512), that it holds
at least the least data a JPEG of that size can have, then a reduced-scale decode (JPEG
draft mode, 1/8 of each side) that proves the bytes are whole without paying for a full
decode.

Why a least-data check: libjpeg fills what a JPEG lacks with grey and reports it only
as a warning PIL does not pass on, so a 1x1 JPEG whose header is patched to say
4096x4096 decodes without an error, to flat grey. Huffman coding (every JPEG encoder's
default) spends at least one bit on each MCU (the DC code of its first block), so the
data after the first scan header is at least MCUs / 8 bytes; a real flat grey
4096x4096 JPEG has kilobytes of it. Arithmetic-coded JPEGs can spend less than a bit
an MCU and are not held to it.
"""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image

# Pick-a-Pic's images are at most 1024 px a side; 4096 leaves room for larger models
# while bounding a full decode at 4096 x 4096 x 3 bytes (48 MB).
MAX_SIDE = 4096
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a JPEG with extra frames (some cameras write it)
# The longest side over the shortest. Pick-a-Pic's images are square (512 to 1024 px);
# 4:1 leaves room for wide or tall models while a 512 px crop of the short side stays
# at most 2048 px long in the trainer.
MAX_ASPECT = 4
_ARITHMETIC_SOF = (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_SOF = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, *_ARITHMETIC_SOF)
_NO_LENGTH = (0x01, *range(0xD0, 0xD9))  # TEM, RST0-7, SOI: markers without a segment


class ImageProblem(ValueError):
    """Why some bytes are not an image the store takes; the message is one short clause."""


def check_jpeg(data: bytes, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) of JPEG bytes that decode; raises `ImageProblem` saying why not."""
    with warnings.catch_warnings():
        # PIL warns (on stderr) about large declared sizes; the limit below decides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise ImageProblem(
                f"declares over {2 * Image.MAX_IMAGE_PIXELS} pixels, "
                f"beyond the {max_side} px per side limit"
            ) from None
        except Exception:  # PIL raises many types for bytes it cannot read
            raise ImageProblem(
                "is not a decodable image (an unknown format, or a damaged header)"
            ) from None
    with image:
        if image.format not in JPEG_FORMATS:
            raise ImageProblem(
                f"holds {image.format} bytes, not JPEG: re-encode it as JPEG "
                "(Pick-a-Pic's jpg columns hold JPEG)"
            )
        width, height = image.size
        if max(width, height) > max_side:
            raise ImageProblem(
                f"declares {width}x{height} pixels, over the {max_side} px per side limit "
                "(--max-image-side)"
            )
        if max(width, height) > MAX_ASPECT * min(width, height):
            raise ImageProblem(
                f"is {width}x{height} pixels, one side over {MAX_ASPECT} times the other "
                f"(the limit: {MAX_ASPECT}:1)"
            )
        _check_enough_data(data, width, height)
        try:
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
        except Exception:
            raise ImageProblem(
                "is not a decodable image (truncated or corrupt JPEG data)"
            ) from None
    return width, height


def _check_enough_data(data: bytes, width: int, height: int) -> None:
    """Refuse JPEG bytes with less entropy-coded data than `width`x`height` needs (see the
    module's docstring); bytes whose markers cannot be walked are left to the decode."""
    scan = _first_scan(data)
    if scan is None:
        return
    start, (h_max, v_max), arithmetic = scan
    mcus = math.ceil(width / (8 * h_max)) * math.ceil(height / (8 * v_max))
    least = math.ceil(mcus / 8)
    if not arithmetic and len(data) - start < least:
        raise ImageProblem(
            f"declares {width}x{height} pixels but holds {len(data) - start} bytes of "
            f"image data, under the {least} that many pixels take at the least: a "
            "truncated or damaged JPEG"
        )


def _first_scan(data: bytes) -> tuple[int, tuple[int, int], bool] | None:
    """(offset of the first scan's entropy-coded data, the frame's largest (horizontal,
    vertical) sampling factors, whether it is arithmetic-coded), walking the JPEG's
    marker segments; None when they do not lead to a scan after a frame header."""
    pos, frame = 2, None  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF:
            factors = data[pos + 11:end:3]  # after precision, size, count: (id, hv, table)
            if not factors:
                return None
            frame = ((max(f >> 4 for f in factors) or 1, max(f & 15 for f in factors) or 1),
                     marker in _ARITHMETIC_SOF)
        elif marker == 0xDA:
            return None if frame is None else (end, *frame)
        pos = end
    return None
