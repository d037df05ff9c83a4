"""``crop``: a region of an image, kept in the session as a new image."""

from __future__ import annotations

from rlyard.domain import ToolResult
from tool_servers.image import _common as image
from tool_servers.image import ops
from tool_servers.image.boxes import RegionArgs, resolve_box
from tool_servers.registry import register
from tool_servers.session import Session


class CropArgs(RegionArgs):
    """Arguments of ``crop``: an image and a box."""


@register
class Crop(image.ImageTool):
    """Cuts a region out of an image; the region becomes a new image of the session."""

    name = "crop"
    description = ("Crop a region of an image of this session. The region is returned at its full resolution "
                   "(scaled down only to fit the output limit) and kept as a new image whose id the result gives.")
    Args = CropArgs

    async def run(self, args: CropArgs, session: Session) -> ToolResult:
        """Resolve the box on the image's size, cut it on a worker thread, keep it."""
        source = image.image_of(session, args.image_id)
        box = resolve_box(args.box, args.units, source.width, source.height)
        out = await self.ctx.run_blocking(
            lambda: image.make_output(self.ctx, ops.crop(image.pixels_of(self.ctx, source), box), keep=True))
        new_id = image.keep_image(self.ctx, session, self.name, out, image.Origin(args.image_id, box[0], box[1], 1, 1))
        text = f"crop of image {args.image_id}, region {image.box_list(box)}: new image {new_id}, " \
               f"{out.width}x{out.height} pixels."
        return image.result(text, out, new_id, {"image_id": new_id, "source_image_id": args.image_id,
                                                "box": image.box_list(box)})
