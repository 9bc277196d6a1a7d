"""The deploy step: roll the MLflow champion out to KServe or a local predictor (``python -m deploy``)."""
