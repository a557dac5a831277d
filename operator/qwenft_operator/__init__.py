"""qwenft operator: drives QwenFineTune resources through validate, train, merge and serve."""
