"""``confirm``: IMAgent's visual confirmation — a region at full resolution with a claim to check."""

from __future__ import annotations

from pydantic import Field

from rlyard.domain import ToolResult
from tool_servers.image import _common as image
from tool_servers.image.boxes import RegionArgs
from tool_servers.registry import register
from tool_servers.session import Session


class ConfirmArgs(RegionArgs):
    """Arguments of ``confirm``: an image, a box and the claim to check against it."""

    claim: str = Field(min_length=1, max_length=2000,
                       description="what you believe the region shows, e.g. 'the sign reads OPEN'")


@register
class Confirm(image.ImageTool):
    """Shows a region at full resolution beside the claim the policy made about it."""

    name = "confirm"
    description = ("Check a claim about a region of an image of this session: the region comes back at full "
                   "resolution with your claim, so that you can confirm or correct it. Nothing is kept.")
    Args = ConfirmArgs

    async def run(self, args: ConfirmArgs, session: Session) -> ToolResult:
        """The region as ``revisit`` gives it, and the claim."""
        text, out, structured = await image.full_resolution_region(self, args.image_id, args.box, args.units, session)
        text = (f"Claim to check: {args.claim!r}\nThe {text}\nDoes the region support the claim? Confirm it, or "
                "correct it from what the region shows.")
        return image.result(text, out, "", {**structured, "claim": args.claim})
