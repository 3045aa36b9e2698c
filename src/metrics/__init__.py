"""Metrics: text generation (ROUGE-L, BLEU) through torchmetrics."""
