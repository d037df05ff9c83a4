"""Settings of the image tool family (environment prefix ``RLYARD_TOOLS_IMAGE``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlyard.client import DEFAULT_MAX_MESSAGE_BYTES
from rlyard.errors import ConfigError
from rlyard.settings import EnvSettings

# What a result message holds beside its image (text, structured JSON, framing).
_MESSAGE_HEADROOM_BYTES = 1024 * 1024
OUTPUT_FORMATS = ("png", "jpeg")


@dataclass(frozen=True)
class ImageSettings(EnvSettings):
    """The limits of the image tools.

    ``max_pixels`` bounds every image the tools decode or make (checked from the file's header
    before decoding, so a decompression bomb costs nothing); returned images are at most
    ``max_output_side`` pixels a side and ``max_output_bytes`` encoded (downscaled or re-encoded
    to fit, and the result says so); ``max_zoom`` caps ``zoom``'s factor.
    """

    ENV_PREFIX = "RLYARD_TOOLS_IMAGE"

    max_pixels: int = 25_000_000            # width × height of an image, read from its header
    max_output_side: int = 1024             # longer side of a returned image (and of a zoom's result)
    max_output_bytes: int = 2 * 1024 * 1024  # encoded bytes of a returned image
    max_zoom: float = 8.0                   # zoom factor at most
    output_format: str = "png"              # how returned images are encoded first: png or jpeg
    jpeg_quality: int = 90                  # for jpeg output, and for re-encoding what PNG cannot fit
    decoded_cache_bytes: int = 256 * 1024 * 1024   # decoded pixels kept for reuse across calls; 0 = off
    opencv_threads: int = 1                 # OpenCV's own threads (calls already run on the server's workers)

    def __post_init__(self) -> None:
        p = self.ENV_PREFIX
        for name in ("max_pixels", "max_output_side", "opencv_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{p}_{name.upper()} must be >= 1 (got {getattr(self, name)})")
        if self.max_output_side**2 > self.max_pixels:
            raise ConfigError(f"{p}_MAX_OUTPUT_SIDE² ({self.max_output_side**2}) must be at most {p}_MAX_PIXELS "
                              f"({self.max_pixels}): a zoom's result is that big")
        most = DEFAULT_MAX_MESSAGE_BYTES - _MESSAGE_HEADROOM_BYTES
        if not 1024 <= self.max_output_bytes <= most:
            raise ConfigError(f"{p}_MAX_OUTPUT_BYTES must be between 1024 and {most} (got {self.max_output_bytes}): "
                              f"an image travels in one gRPC message, and clients accept "
                              f"{DEFAULT_MAX_MESSAGE_BYTES} bytes at most")
        if not (math.isfinite(self.max_zoom) and self.max_zoom >= 1):
            raise ConfigError(f"{p}_MAX_ZOOM must be a finite factor >= 1 (got {self.max_zoom})")
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"{p}_OUTPUT_FORMAT must be one of {', '.join(OUTPUT_FORMATS)} "
                              f"(got {self.output_format!r})")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"{p}_JPEG_QUALITY must be between 1 and 100 (got {self.jpeg_quality})")
        if self.decoded_cache_bytes < 0:
            raise ConfigError(f"{p}_DECODED_CACHE_BYTES must be >= 0 (0 turns the cache off)")
