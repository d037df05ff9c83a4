"""reward_service (implemented by a later issue)."""
