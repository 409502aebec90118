"""estate-gateway: the guard-room box of a residential compound."""

__version__ = "0.1.0"
