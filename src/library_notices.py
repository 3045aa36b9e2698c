"""Notices that libraries log when they are imported and that a lorafit user cannot act on, dropped before any of
lorafit's modules imports those libraries (``src/__init__.py`` installs this).

transformers 5 logs, the first time a pipeline module asks for an image processor, that torchvision is missing
and the PIL processor is used instead: torchvision does not install beside the CPU torch wheel lorafit is set up
with, and the PIL processor is the one lorafit's CLIP uses anyway. Left in, it would turn every one-line error of a
run that imports diffusers into three lines.
"""

import logging

FALLBACK_NOTICE = "requires torchvision (not installed); falling back to"


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return FALLBACK_NOTICE not in record.getMessage()


def install() -> None:
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _DropTorchvisionFallback) for f in logger.filters):
        logger.addFilter(_DropTorchvisionFallback())
