"""The reward service: rule-based, tool-verification and model-judge rewards, one file each,
composed by name and weight behind ``rlyard.reward.v1.RewardService``."""
