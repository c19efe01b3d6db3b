"""Every prompt template (stub; being written)."""

# How a prompt is wrapped for a tokenizer without a chat template (the tiny model).
PLAIN_FORMAT = "{prompt}\nResponse:"
