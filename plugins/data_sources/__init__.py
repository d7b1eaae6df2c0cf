"""Data sources: one module per source of documents."""
