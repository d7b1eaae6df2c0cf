"""Entry points come from registry.yaml so the catalogue and the package cannot drift apart."""
from pathlib import Path

import yaml
from setuptools import setup

catalogue = yaml.safe_load((Path(__file__).parent / "registry.yaml").read_text())
setup(
    entry_points={
        "console_scripts": ["saebench = saebench.cli:main"],
        "saebench": [f"{p['kind']}.{p['name']} = {p['module']}" for p in catalogue["plugins"]],
    }
)
