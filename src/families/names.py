"""The built-in families' names: the one place they are written. Checkpoints (the adapter record), run reports and
serving listings store these strings, so they never change."""

SEQ2SEQ = "seq2seq"
CAUSAL = "causal"
DIFFUSION = "diffusion"
CHAT = "chat"
