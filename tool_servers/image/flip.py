"""``flip``: an image mirrored, kept in the session as a new image."""

from __future__ import annotations

from pydantic import Field

from rlyard.domain import ToolResult
from tool_servers.image import _common as image
from tool_servers.image import ops
from tool_servers.image.boxes import ImageArgs
from tool_servers.registry import register
from tool_servers.session import Session


class FlipArgs(ImageArgs):
    """Arguments of ``flip``: an image and a direction."""

    direction: ops.FlipDirection = Field(
        description="'horizontal' mirrors left and right, 'vertical' turns upside down, 'both' does both")


@register
class Flip(image.ImageTool):
    """Mirrors an image."""

    name = "flip"
    description = ("Flip an image of this session horizontally (mirror left-right), vertically (upside down) or both. "
                   "The result is kept as a new image whose id the result gives.")
    Args = FlipArgs

    async def run(self, args: FlipArgs, session: Session) -> ToolResult:
        """Flip on a worker thread."""
        source = image.image_of(session, args.image_id)
        out = await self.ctx.run_blocking(
            lambda: image.make_output(self.ctx, ops.flip(image.pixels_of(self.ctx, source), args.direction),
                                      keep=True))
        new_id = image.keep_image(self.ctx, session, self.name, out, None)
        text = f"image {args.image_id} flipped {args.direction}: new image {new_id}, {out.width}x{out.height} pixels."
        return image.result(text, out, new_id, {"image_id": new_id, "source_image_id": args.image_id,
                                                "direction": args.direction})
