"""nlptl: the ULMFiT recipe (general LM -> domain adaptation -> task fine-tuning) for Hugging Face transformers."""

__version__ = "0.1.0"
