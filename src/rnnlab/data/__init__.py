"""Data shared by every task: vocabularies, text and tokenising, known corpora, batching."""
