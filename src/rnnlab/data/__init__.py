"""Data: vocabularies, text, known corpora, batching.

Importing the classification module registers the corpora it knows (``imdb``) beside the
language-modelling ones, so every known corpus is listed wherever ``rnnlab.data`` is used.
"""

from rnnlab.data import classification as _classification  # noqa: F401  (registers imdb)
