"""First-party plugins. Each module is one plugin, registered through the ``saebench`` entry-point group
(see registry.yaml) exactly as a third-party package's would be."""
