"""keraformer: Transformer research components and pretrained-model builders for Keras 3.

Importing the package imports every module that defines a Keras-serializable class (layers,
losses, optimizers), so that they are registered with Keras and a saved ``.keras`` model loads
with ``keras.saving.load_model(path)`` right after ``import keraformer``. The cost is that of
``import keras``; the modules themselves only define classes and functions.
"""

__version__ = "0.1.0"

# The registering modules, each package's own ``__init__`` importing its modules. Model
# modules are imported one by one: ``keraformer.models`` imports the builders lazily.
from keraformer import attentions, losses, optimizers, positions  # noqa: E402,F401
from keraformer import embedding, feedforward, masks, normalization  # noqa: E402,F401
from keraformer.models import bert, blocks, t5  # noqa: E402,F401
