"""What a Hugging Face hub model id looks like: one pattern for the spec and the merge.

The operator's spec schema (``spec.model.hub.id``, checked by the API server) and
``qwenft merge --base`` (a hub id is downloaded, anything else must be a local directory)
read a name the same way. Like the rest of the trainer modules the operator imports, this one
imports nothing heavy.

    assert re.fullmatch(HUB_ID, "Qwen/Qwen2.5-7B-Instruct")
"""

from __future__ import annotations

# "Qwen/Qwen2.5-7B-Instruct", or a bare "gpt2": an optional namespace, then the repo name,
# each starting with a letter or digit. Anchored, as a JSON-schema pattern is read.
HUB_ID = r"^[A-Za-z0-9][-._A-Za-z0-9]*(/[A-Za-z0-9][-._A-Za-z0-9]*)?$"
