"""text: from records to token ids.

What it is for: tokenizers (the byte tokenizer, tokenizer.json through `tokenizers`, one registry and
one `load_tokenizer`), the record formats and their validation, the prompt template, truncation,
batching, and the JSONL/JSON readers and writers used by every layer above.
What it is not: models or training; it imports only `backends` and `core`.
"""
