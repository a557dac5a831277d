"""Pure builders: a :class:`~qwenft_operator.parsed_run.Run` in, a Kubernetes object (a dict) out.

Nothing here talks to the API or reads the environment; the same run always gives the
same objects, so tests compare whole manifests and a restarted operator rebuilds exactly
what it made before. One module per child kind:

- :mod:`.config`: the trainer config (``TrainConfig``) and its ConfigMap
- :mod:`.validation`: the CPU-only dataset validation Job
- :mod:`.training`: the headless rendezvous Service and the Indexed training Job
- :mod:`.merge`: the merge Job
- :mod:`.serving`: the server Deployment and Service (builtin server or vLLM)
- :mod:`.jobs`, :mod:`.pods`, :mod:`.paths`, :mod:`.fetch`: pieces the steps share
"""
