"""linegate: edge gateway for serialized packaging and assembly lines."""

__version__ = "0.1.0"
