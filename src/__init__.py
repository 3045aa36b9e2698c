"""lorafit: declarative LoRA fine-tuning with PyTorch Lightning and Hydra."""

from src import library_notices

library_notices.install()
