"""``python train.py <composition> preflight=true`` (``run.preflight``): everything up to the first optimizer step,
without reading a weight or training."""
