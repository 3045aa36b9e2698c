"""Model and tokenizer builders: hub ids, local directories and tiny offline models."""
