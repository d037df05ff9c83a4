"""ViPER's two perception tasks as rules: the description grammar (``description``) and the
render-and-compare scores (``scoring``). The ``viper_image`` and ``viper_instance`` rewards score
with them and the task generator (``envs.vision.viper_tasks``) states the grammar in its prompts
and writes gold descriptions with it, so the two cannot disagree."""
