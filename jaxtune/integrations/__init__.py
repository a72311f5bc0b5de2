"""Integrations with other tools, each imported only when used (see :mod:`jaxtune.loggers`
for TensorBoard and MLflow): :mod:`jaxtune.integrations.optuna`."""
