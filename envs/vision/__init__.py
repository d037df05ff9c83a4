"""Vision environments: synthetic scenes drawn from a seed (``scenes``) and the SSL4RL
self-supervised tasks built on them (``ssl_tasks``). Needs the ``image`` extra (numpy, OpenCV)."""
