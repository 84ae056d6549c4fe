"""labelpilot: ML backends for Label Studio and CVAT."""

__version__ = "0.1.0"
