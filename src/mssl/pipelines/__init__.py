"""Pipelines: the stages of ``train/`` and ``downstream/`` run in order (prepare → pre-train → export →
fine-tune / probe), resumable and reported. ``demo`` runs them on the embedded sample, ``benchmark``
runs the label-efficiency protocol."""
