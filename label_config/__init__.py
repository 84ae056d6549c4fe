"""Label Studio configs that work with labelpilot out of the box."""

from pathlib import Path

DIR = Path(__file__).parent


def load(name: str) -> str:
    """The XML of `label_config/<name>.xml`."""
    return (DIR / f"{name}.xml").read_text()
