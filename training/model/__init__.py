"""The CNN-LSTM: its configuration, the Keras graph, loading a version, uncertainty."""
