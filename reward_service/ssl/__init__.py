"""The SSL4RL answer rules: what each self-supervised task's answer looks like, how a policy's text
is read into one, and the chance levels. The ``ssl_*`` rewards score with them and the vision task
generator (``envs.vision.ssl_tasks``) states them in its prompts, so the two cannot disagree."""
