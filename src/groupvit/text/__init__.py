"""Tokenizer, prompt templates and noun extraction."""
