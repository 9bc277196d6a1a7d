"""DeepGuard core: what the stages, the predictor and the deploy step share (config, names, model format)."""
