"""``python -m tool_servers``: run the tool server configured from the environment."""

from rlyard.cli.serve import run_service

if __name__ == "__main__":
    run_service("tools")
