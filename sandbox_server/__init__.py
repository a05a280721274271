"""Oasis sandbox service: runs untrusted Python and Node.js code for LLM agents."""

__version__ = "0.1.0"
