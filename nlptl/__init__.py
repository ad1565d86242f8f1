"""nlptl: the ULMFiT recipe (general LM -> domain adaptation -> task fine-tuning) for Hugging Face transformers."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """nlptl.Classifier and nlptl.BatchClassifier (nlptl/inference.py), imported when first asked for: `import
    nlptl` (and `nlptl --help`) stays without torch."""
    if name in ("Classifier", "BatchClassifier"):
        from nlptl import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'nlptl' has no attribute '{name}'")
