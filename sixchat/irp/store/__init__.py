"""The registry's storage: the interface and its SQLite and PostgreSQL implementations."""
