"""Declarative LoRA fine-tuning with PyTorch Lightning and Hydra."""
