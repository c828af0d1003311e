"""thumblab-dagster: media collections turned into versioned, checked FAISS indices."""

__version__ = "0.1.0"
