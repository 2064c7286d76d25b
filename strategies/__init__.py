"""Strategies: pure functions of a market view to desired bids (see ``strategies.base``)."""
