"""Sample encoders: how a conversation becomes model inputs, one per text family (the family names its class).

An encoder is connected to a text datamodule (``TextDataModule.connect``) and tokenizes its samples in
``datasets.map`` (``__call__``), pads a batch (``collate``), says how long samples are before truncation
(``lengths``, for preflight) and encodes requests exactly as evaluation batches (``prompt_batch``, for serving).
"""
