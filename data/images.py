"""Image bytes the store accepts: JPEG, of a bounded size, that decodes.

Pick-a-Pic's `jpg_0`/`jpg_1` columns and the store's `images.jpg` hold JPEG bytes, and
the trainer decodes every image it reads. So an import checks each image before it is
stored: its format and declared size from the header (read without decoding the
pixels: a 643-byte file can declare 12000x12000 pixels, which take 1.5 GB to decode),
then a reduced-scale decode (JPEG draft mode, 1/8 of each side) that proves the bytes
are whole without paying for a full decode.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

# Pick-a-Pic's images are at most 1024 px a side; 4096 leaves room for larger models
# while bounding a full decode at 4096 x 4096 x 3 bytes (48 MB).
MAX_SIDE = 4096
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a JPEG with extra frames (some cameras write it)


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
        try:
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
        except Exception:
            raise ImageProblem(
                "is not a decodable image (truncated or corrupt JPEG data)"
            ) from None
    return width, height
