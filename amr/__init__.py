"""amr: language-based audio retrieval with metadata (Primus and Widmer, 2024)."""

__version__ = "0.1.0"
