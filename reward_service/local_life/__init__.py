"""The LocalSearchBench rules: the checklist of a task and the metrics of an answer, which the
``poi_*`` rewards compute and the local-life task generator checks its tasks with."""
