"""``zoom``: a region of an image enlarged, kept in the session as a new image."""

from __future__ import annotations

from pydantic import Field

from rlyard.domain import ToolResult
from tool_servers.image import _common as image
from tool_servers.image import ops
from tool_servers.image.boxes import RegionArgs, resolve_box
from tool_servers.registry import register
from tool_servers.session import Session


class ZoomArgs(RegionArgs):
    """Arguments of ``zoom``: an image, a box and how many times to enlarge it."""

    factor: float = Field(2.0, ge=1, allow_inf_nan=False,
                          description="how many times to enlarge the region (at least 1; the server caps it)")


@register
class Zoom(image.ImageTool):
    """Crops a region and resizes it by a factor, within the server's zoom cap and output size."""

    name = "zoom"
    description = ("Zoom into a region of an image of this session: crop it and enlarge it by a factor (default 2, "
                   "capped by the server; the result is at most the output size a side). The result is kept as a "
                   "new image whose id the result gives.")
    Args = ZoomArgs

    async def run(self, args: ZoomArgs, session: Session) -> ToolResult:
        """Check the factor against the cap, then crop and resize on a worker thread."""
        cap, side = self.settings.max_zoom, self.settings.max_output_side
        if args.factor > cap:
            raise image.ToolError(f"a factor of {args.factor:g} is over this server's zoom cap of {cap:g}: ask for "
                                  f"at most {cap:g}, or zoom into a smaller region")
        source = image.image_of(session, args.image_id)
        box = resolve_box(args.box, args.units, source.width, source.height)
        size = ops.zoom_size(box, args.factor, side)
        out = await self.ctx.run_blocking(
            lambda: image.make_output(self.ctx, ops.zoom(image.pixels_of(self.ctx, source), box, size), keep=True))
        width, height = box[2] - box[0], box[3] - box[1]
        origin = image.Origin(args.image_id, box[0], box[1], width / size[0], height / size[1])
        new_id = image.keep_image(self.ctx, session, self.name, out, origin)
        scale = max(size) / max(width, height)
        text = (f"zoom into image {args.image_id}, region {image.box_list(box)} ({width}x{height}), enlarged "
                f"{scale:.3g}x: new image {new_id}, {out.width}x{out.height} pixels.")
        if scale < args.factor - 1e-9:
            text += f" (Asked for {args.factor:g}x: a zoom's result is at most {side} pixels a side.)"
        return image.result(text, out, new_id, {"image_id": new_id, "source_image_id": args.image_id,
                                                "box": image.box_list(box), "factor": round(scale, 6)})
