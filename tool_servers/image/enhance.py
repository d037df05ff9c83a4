"""``enhance``: an image with more contrast, sharper, or equalised, kept in the session as a new image."""

from __future__ import annotations

from pydantic import Field

from rlyard.domain import ToolResult
from tool_servers.image import _common as image
from tool_servers.image import ops
from tool_servers.image.boxes import ImageArgs
from tool_servers.registry import register
from tool_servers.session import Session


class EnhanceArgs(ImageArgs):
    """Arguments of ``enhance``: an image and at least one change."""

    contrast: float = Field(1.0, ge=0.1, le=4.0, allow_inf_nan=False,
                            description="contrast factor around the mean brightness (1: unchanged, 1.5: more)")
    sharpen: float = Field(0.0, ge=0.0, le=5.0, allow_inf_nan=False,
                           description="strength of an unsharp mask (0: none, 1: strong)")
    equalize: bool = Field(False, description="equalise brightness locally (CLAHE), for dark or washed-out images")


@register
class Enhance(image.ImageTool):
    """Raises contrast, sharpens, or equalises an image."""

    name = "enhance"
    description = ("Enhance an image of this session to read details: contrast (a factor), sharpen (a strength) and "
                   "equalize (local brightness equalisation). The result is kept as a new image whose id the "
                   "result gives.")
    Args = EnhanceArgs

    async def run(self, args: EnhanceArgs, session: Session) -> ToolResult:
        """Apply the changes on a worker thread."""
        if args.contrast == 1.0 and args.sharpen == 0.0 and not args.equalize:
            raise image.ToolError("these arguments change nothing: set contrast (other than 1), sharpen (above 0) "
                                  "or equalize (true)")
        source = image.image_of(session, args.image_id)
        out = await self.ctx.run_blocking(
            lambda: image.make_output(self.ctx, ops.enhance(image.pixels_of(self.ctx, source), args.contrast,
                                                            args.sharpen, args.equalize), keep=True))
        new_id = image.keep_image(self.ctx, session, self.name, out, None)
        changes = [f"contrast {args.contrast:g}" if args.contrast != 1.0 else "",
                   f"sharpen {args.sharpen:g}" if args.sharpen else "", "equalized" if args.equalize else ""]
        text = (f"image {args.image_id} enhanced ({', '.join(c for c in changes if c)}): new image {new_id}, "
                f"{out.width}x{out.height} pixels.")
        return image.result(text, out, new_id, {"image_id": new_id, "source_image_id": args.image_id,
                                                "contrast": args.contrast, "sharpen": args.sharpen,
                                                "equalize": args.equalize})
