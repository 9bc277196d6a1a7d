"""The KServe predictor (``python -m serving``) and ``make serve`` (``python -m serving.serve``)."""
