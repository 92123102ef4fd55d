"""Input side: dataset sources, SimCLR augmentations and tf.data pipelines."""
