"""``python -m reward_service``: run the reward service configured from the environment."""

from reward_service.app import from_env
from rlyard.server import main

if __name__ == "__main__":
    main(from_env)
