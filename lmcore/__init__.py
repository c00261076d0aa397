"""lmcore: the library behind every pipeline stage.

Plain functions over files: corpus reading, cleaning, splitting, tokenizer training,
token sharding (and, later, the model, training and evaluation). It knows nothing of
Dagster; progress leaves through callbacks and ``logging``. No import-time side effects.
"""

__version__ = "0.1.0"
