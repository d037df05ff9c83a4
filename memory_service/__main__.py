"""``python -m memory_service``: run the graph memory service configured from the environment."""

from memory_service.app import from_env
from rlyard.server import main

if __name__ == "__main__":
    main(from_env)
