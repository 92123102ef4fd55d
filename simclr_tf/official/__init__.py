"""Official (google-research/simclr) checkpoints in simclr_tf: load, evaluate, fine-tune, export.

Three native formats are read, each with its architecture inferred from the variables:
TF2 object-graph checkpoints (``ckpt-<step>``), TF2 SavedModels (``saved_model/``) and TF1
name-based checkpoints (``model.ckpt-<step>``). ``load_official(path)`` returns a simclr_tf
SimCLR model with identical outputs; :mod:`simclr_tf.official.convert` plugs them into run.py,
tools/export.py and tools/convert_checkpoint.py.
"""

from simclr_tf.official.load import (
    OfficialInfo,
    load_official,
    reference_endpoints,
    restore_into,
)
from simclr_tf.official.reader import OfficialCheckpointError, detect_format, is_official

__all__ = [
    "OfficialCheckpointError",
    "OfficialInfo",
    "detect_format",
    "is_official",
    "load_official",
    "reference_endpoints",
    "restore_into",
]
