"""Checklist items of local-life tasks in words (what prompts and judges read). The checks
themselves are the reward service's (``reward_service.local_life.checklist``), so the task
generator and the metrics cannot disagree."""

from __future__ import annotations

from reward_service.local_life.checklist import CHECK_KINDS, Item, check_poi

__all__ = ["Item", "check_poi", "describe"]


def describe(item: Item) -> str:
    """A checklist item in words (what a judge reads)."""
    kind = item["kind"]
    if kind == "count":
        return f"count: at most {item['max']} merchant(s)"
    if kind == "type":
        return "type: " + " / ".join(f"{k} {item[k]}" for k in ("category", "subcategory") if k in item)
    if kind == "location":
        parts = [f"{k.replace('_', ' ')} {item[k]}" for k in ("city", "district", "business_area") if k in item]
        if "radius_m" in item:
            parts.append(f"within {item['radius_m']} m of {item['anchor']} (not it)")
        return "location: " + ", ".join(parts)
    if kind == "price":
        if "below_anchor" in item:
            return f"price: cheaper per person than {item['below_anchor']}"
        bounds = [f"at least ¥{item['min']:g}" if "min" in item else "", f"at most ¥{item['max']:g}" if "max" in item
                  else ""]
        return "price: " + " and ".join(b for b in bounds if b) + " per person"
    if kind == "rating":
        return (f"rating: higher than {item['above_anchor']}'s" if "above_anchor" in item
                else f"rating: {item['min']:.1f} or higher")
    if kind == "open_at":
        return f"open at {item['time']}" + (f" on {item['weekday']}" if item.get("weekday") else "")
    if kind == "tag":
        return f"tagged '{item['tag']}'"
    if kind == "facility":
        return f"has {item['facility']}"
    if kind == "product":
        return f"sells {item['name']} for ¥{item['max_price']:g} or less"
    raise ValueError(f"unknown checklist kind {kind!r}; known: {', '.join(sorted(CHECK_KINDS))}")
