"""The Python API: trained models to load and use (a language model, a text classifier)."""

from rnnlab.classify.inference import TextClassifier
from rnnlab.lm.inference import LanguageModel

__all__ = ["LanguageModel", "TextClassifier"]

