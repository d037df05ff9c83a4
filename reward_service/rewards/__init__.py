"""Reward plug-ins: one module per reward, named after the reward. Modules whose name
starts with ``_`` hold shared helpers and register nothing."""
