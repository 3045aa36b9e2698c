"""Data tools behind ``prepare_data.py``: a report on prepared records (counts, skip reasons,
length statistics) and its plots, computed over the Arrow cache in bounded memory."""
