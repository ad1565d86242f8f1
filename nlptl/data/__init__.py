"""Data: corpora and tasks (names and files -> text), tokenization and packing."""
