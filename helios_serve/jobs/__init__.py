"""Durable video jobs: a SQLite job store and the files of each job under the data directory."""
