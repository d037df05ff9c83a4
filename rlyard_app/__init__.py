"""The application: the ``rlyard`` command, the embedded launcher, the deployment renderer and
the demos. The one layer that may import every other; nothing imports it."""
