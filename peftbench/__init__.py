"""peftbench: benchmark parameter-efficient fine-tuning methods at fixed trainable-parameter budgets."""

__version__ = "0.1.0"
