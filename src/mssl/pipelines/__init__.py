"""Pipelines: the stages of ``train/`` and ``downstream/`` wired together. ``pretrain`` is ``mssl.pretrain``
(the training engine with the downstream probes as a callback); ``benchmark`` runs the label-efficiency
protocol (prepare → pre-train → export → fine-tune / probe, resumable); ``demo`` runs the whole chain on
the embedded sample. Their reports are rendered in ``viz/``."""
