"""qwenft trainer: LoRA / Q-LoRA / full fine-tuning of Qwen models, merge and serve."""
