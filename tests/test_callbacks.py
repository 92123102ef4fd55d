"""callbacks.WeightDecayLog: the reported penalty against NumPy on the weights after the epoch."""

from __future__ import annotations

import keras
import numpy as np

from simclr_tf.callbacks import WeightDecayLog


class _Record(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.logs = dict(logs or {})
        self.weights = [w.numpy() for w in self.model.trainable_weights]


def test_weight_decay_log_is_the_l2_penalty_of_the_epoch_end_weights():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input([4]), keras.layers.Dense(3), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(16, 2)).astype(np.float32)
    record = _Record()
    model.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[WeightDecayLog(3e-4), record])
    kernels = [w for w in record.weights if w.ndim > 1]  # biases (rank 1) get no decay
    expected = 3e-4 * 0.5 * sum(float(np.sum(np.square(w.astype(np.float64)))) for w in kernels)
    np.testing.assert_allclose(record.logs["weight_decay"], expected, rtol=1e-5)
