"""Networks: ResNet encoders, heads and the SimCLR Keras model."""
