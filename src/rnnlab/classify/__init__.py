"""Text classification: labelled data, encoding, the training task, metrics and inference."""
