"""Where each reward lives: reward name → its module. A reward service imports only the modules
of the rewards it serves (``RLYARD_REWARD_REWARDS``)."""

from __future__ import annotations

REWARD_MODULES: dict[str, str] = {
    # rule-based
    "qa_em": "reward_service.rewards.qa_em",
    "qa_f1": "reward_service.rewards.qa_f1",
    "search_r1": "reward_service.rewards.search_r1",
    "format": "reward_service.rewards.format",
    "tool_call_match": "reward_service.rewards.tool_call_match",
    "composite": "reward_service.rewards.composite",
    # SSL4RL: self-supervised vision tasks as verifiable rewards (envs.vision.ssl_tasks)
    "ssl_rotation": "reward_service.rewards.ssl_rotation",
    "ssl_jigsaw": "reward_service.rewards.ssl_jigsaw",
    "ssl_position": "reward_service.rewards.ssl_position",
    "ssl_masked_patch": "reward_service.rewards.ssl_masked_patch",
    # ViPER: coarse-to-fine perception by render-and-compare (envs.vision.viper_tasks; the image extra)
    "viper_image": "reward_service.rewards.viper_image",
    "viper_instance": "reward_service.rewards.viper_instance",
    # tool verification
    "sql_execution": "reward_service.rewards.sql_execution",
    "poi_correctness": "reward_service.rewards.poi_correctness",
    "poi_completeness": "reward_service.rewards.poi_completeness",
    "poi_faithfulness": "reward_service.rewards.poi_faithfulness",
    # model judge
    "judge": "reward_service.rewards.judge",
}

# The pip extra a reward module's optional dependencies come in (a module's own entry first, else its
# package's), for the message when one is missing.
REWARD_EXTRAS: dict[str, str] = {
    "reward_service.rewards": "reward",
    "reward_service.rewards.viper_image": "image",      # numpy and OpenCV render the descriptions
    "reward_service.rewards.viper_instance": "image",
}
