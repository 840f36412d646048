"""The PyTorch source emitter: ``emitter.emit`` writes a Model as plain ``model.py`` with its weights."""
