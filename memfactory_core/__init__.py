"""MemFactory core: memory components, pipelines, runtime, LLM backends, data, metrics, evaluation.

This package has no UI and no database; it is importable on its own.
"""

__version__ = "0.1.0"
