"""envs (implemented by a later issue)."""
