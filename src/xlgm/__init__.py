"""xlgm: cross-lingual generalization measures.

Fine-tune multilingual encoders on one language, evaluate zero-shot transfer to others, compute
generalization measures of each trained model, and test which measure predicts transfer.
"""

__version__ = "0.1.0"
