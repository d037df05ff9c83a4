"""``revisit``: IMAgent's visual reflection — a region of an image shown again at full resolution."""

from __future__ import annotations

from rlyard.domain import ToolResult
from tool_servers.image import _common as image
from tool_servers.image.boxes import RegionArgs
from tool_servers.registry import register
from tool_servers.session import Session


class RevisitArgs(RegionArgs):
    """Arguments of ``revisit``: an image and a box."""


@register
class Revisit(image.ImageTool):
    """Looks at a region again, at the full resolution of the image it came from; keeps nothing."""

    name = "revisit"
    description = ("Look again at a region of an image of this session, at full resolution: a region of a crop or "
                   "zoom is cut from the image it came from. Use it to check what you concluded; nothing is kept.")
    Args = RevisitArgs

    async def run(self, args: RevisitArgs, session: Session) -> ToolResult:
        """Follow the box back to its source and cut it there."""
        text, out, structured = await image.full_resolution_region(self, args.image_id, args.box, args.units, session)
        return image.result(text[0].upper() + text[1:], out, "", structured)
