"""rlyard: reinforcement learning for tool-using agents over gRPC services."""

__version__ = "0.1.0"
