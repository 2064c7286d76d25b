"""Storage: the bot's memory (SQLAlchemy models, schema versions, ingest and queries)."""
