"""Converters from benchmark layouts on disk into the evaluation JSONL."""
