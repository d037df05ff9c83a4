"""The trainable graph memory (arXiv 2511.07800) as a gRPC service: trajectories → decision paths in a
state machine (``fsm``) → meta-cognitions (``distill``) whose utility is learned from reward
(``utility``), in a SQLAlchemy store (``store``) with an in-memory retrieval index (``index``)."""
