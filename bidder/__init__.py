"""clore-bidder: holds GPU capacity on Clore.ai's spot market and GigaSPOT at the lowest price."""

__version__ = "0.1.0"
