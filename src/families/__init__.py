"""Model families: one object per family (seq2seq, causal, diffusion, ...) owning what differs between them.

``registry.FAMILIES`` is the registry every other part of lorafit asks; ``protocol.ModelFamily`` is the contract a
family keeps. This package's ``__init__`` imports nothing, so ``names`` can be imported from anywhere.
"""
