"""The experiment runner: Hydra entry point (``cli``), typed specs, stages, pipeline, loggers, summary."""
