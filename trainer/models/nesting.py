"""Layers of models that nest others (a keras.applications backbone is one layer of ours)."""

import keras


def all_layers(model):
    """The model's layers, with nested models walked into."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)
        else:
            yield layer
