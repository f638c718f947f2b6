"""rnnlab: recurrent neural networks (RNN, LSTM, GRU) for text, on PyTorch."""

__version__ = "0.1.0"
