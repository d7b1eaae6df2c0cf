"""SAE checkpoint loaders: one module per on-disk format."""
