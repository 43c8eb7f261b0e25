"""The learning side of videoloop: sampling, the CNN-LSTM, datasets, training, the model store.

Nothing here imports ``backend``; a worker needs only this package (and Redis).
Importing this package does not import TensorFlow: modules that need it import it themselves.
"""
