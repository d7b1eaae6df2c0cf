"""SAE architectures: one module per architecture."""
