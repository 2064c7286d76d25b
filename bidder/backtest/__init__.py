"""``bidder backtest``: replay recorded markets through the live bot's strategies and rules engine.

- ``data``: recorded history -> per-server event streams on one tick grid (``load_history``);
- ``market``: per-tick ``MarketFrame``s and order books from them;
- ``fills``: who wins a server and what is paid; ``exchange``: our orders, answered as the live
  executor sees the exchange; ``reactive``: rivals that answer our bids;
- ``runner``: one variant (``run_variant``; replays of live sessions via ``decision_times`` and
  ``starting_orders``); ``grid``: many variants over processes (``run_backtest``);
- ``oracle``: the lower bound regret is measured against; ``metrics``, ``report``, ``plot``;
- ``simrecord``: record the simulated market, to have history to replay.
"""
