"""``QwenModelServer``: one base model served with many LoRA adapters behind one endpoint.

The kind's spec and status (:mod:`.spec`, :mod:`.status`), which adapters may join a
server (:mod:`.adapters`), the Deployment and Service that serve them (:mod:`.builders`),
the pure decision (:mod:`.decide`) and the side that reads and writes the API
(:mod:`.controller`). Imports go downward only, as in the rest of the operator.
"""
