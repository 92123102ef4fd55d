"""simclr_tf: SimCLR self-supervised learning for TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
