"""The trainer: policy backends, the tiny policy, rollouts, the GRPO family with ResT and
two-level masks, checkpoints (issue 4 builds it up piece by piece)."""
