"""LightningModules, one per model family; shared pieces in adapter_checkpoint.py and text_lora.py."""
