"""Training: preference pairs in, immutable model versions out (DPO + LoRA)."""
