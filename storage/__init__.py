"""Storage: the bot's memory (SQLAlchemy models, schema versions, ingest and queries).

- ``storage.db``: ``open_database(url, writer=...)``, engines with the SQLite pragmas, sessions.
- ``storage.schema`` / ``storage.migrations``: schema versions, upgrades, refusals.
- ``storage.locks``: the PostgreSQL advisory locks that make writers of one database take turns.
- ``storage.models``: the tables.
- ``storage.gigaspot_ingest``: ``SnapshotIngester`` (GigaSPOT snapshots, interval-encoded);
  ``storage.gigaspot_parse``: the strict, fast snapshot parser and ``SnapshotError``.
- ``storage.spot_record``: ``record_spot_poll``, ``record_marketplace``.
- ``storage.market_views``: ``gigaspot_frame``, ``spot_frame`` (``storage.frames.MarketFrame``),
  ``one_snapshot`` (reads that see one moment, also on PostgreSQL).
- ``storage.transfer``: ``copy_tables`` (``bidder db copy``), ``row_counts``, ``reset_sequences``.
- ``storage.history``: ``machine_history``, ``bid_intervals``, ``bid_prices``, ``state_intervals``,
  ``fact_intervals``, ``snapshot_times`` as numpy arrays.
"""
