"""Presenting results: records, figures and gates, one renderer per output format."""
