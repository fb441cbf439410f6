"""The training pipeline: the steps its components run, compile, local run, submit."""
