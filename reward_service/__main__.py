"""``python -m reward_service``: run the reward service configured from the environment."""

from rlyard.cli.serve import run_service

if __name__ == "__main__":
    run_service("reward")
