"""``python -m tool_servers``: run the tool server configured from the environment."""

from rlyard.server import main
from tool_servers.app import from_env

if __name__ == "__main__":
    main(from_env)
