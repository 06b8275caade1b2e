"""Catalogue of named corpora for charrnn (data only; see catalog.json)."""
