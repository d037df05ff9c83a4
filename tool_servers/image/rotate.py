"""``rotate``: an image turned by an angle, kept in the session as a new image."""

from __future__ import annotations

from pydantic import Field

from rlyard.domain import ToolResult
from tool_servers.image import _common as image
from tool_servers.image import ops
from tool_servers.image.boxes import ImageArgs
from tool_servers.registry import register
from tool_servers.session import Session


class RotateArgs(ImageArgs):
    """Arguments of ``rotate``: an image and an angle."""

    degrees: float = Field(ge=-360, le=360, allow_inf_nan=False,
                           description="counter-clockwise angle in degrees; 90, 180 and 270 turn exactly, other "
                                       "angles enlarge the canvas to hold the whole image")


@register
class Rotate(image.ImageTool):
    """Turns an image counter-clockwise."""

    name = "rotate"
    description = ("Rotate an image of this session counter-clockwise by an angle in degrees (negative: clockwise). "
                   "The result is kept as a new image whose id the result gives.")
    Args = RotateArgs

    async def run(self, args: RotateArgs, session: Session) -> ToolResult:
        """Check the new canvas against the pixel limit, then turn on a worker thread."""
        source = image.image_of(session, args.image_id)
        width, height = ops.rotated_size(source.width, source.height, args.degrees)
        if width * height > self.settings.max_pixels:
            raise image.ToolError(f"turning image {args.image_id} by {args.degrees:g} degrees needs a {width}x{height} "
                                  f"canvas, over this server's limit of {self.settings.max_pixels:,} pixels: crop a "
                                  "smaller region first, or turn by a multiple of 90 degrees")
        out = await self.ctx.run_blocking(
            lambda: image.make_output(self.ctx, ops.rotate(image.pixels_of(self.ctx, source), args.degrees),
                                      keep=True))
        new_id = image.keep_image(self.ctx, session, self.name, out, None)
        text = (f"image {args.image_id} rotated {args.degrees:g} degrees counter-clockwise: new image {new_id}, "
                f"{out.width}x{out.height} pixels.")
        return image.result(text, out, new_id, {"image_id": new_id, "source_image_id": args.image_id,
                                                "degrees": args.degrees})
