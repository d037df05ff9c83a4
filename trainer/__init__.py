"""trainer (implemented by a later issue)."""
