"""LightningDataModules, one per dataset; shared text-pair encoding and collation in text_pairs.py."""
