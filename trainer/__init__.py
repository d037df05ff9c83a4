"""The trainer: the tiny policy, the trainable HF policy and its samplers, the async rollout
engine, the GRPO family with ResT and two-level masks, checkpoints, the composition root
(``compose``) and the trainer service."""
