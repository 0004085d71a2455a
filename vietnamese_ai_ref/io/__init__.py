"""io: files on disk.

What it is for: Hugging Face model folders (one reader and one writer for both families; safetensors,
shards, config.json), and training checkpoints (atomic folders, resume).
What it is not: training logic or the command line; it imports the layers below it only.
"""
