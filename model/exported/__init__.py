"""A customer's own segmentation network, exported with TorchScript or ``torch.export``.

A model is two files side by side:

* the weights: a TorchScript archive (``torch.jit.save``, usually ``.pt``) or an
  exported program (``torch.export.save``, ``.pt2``);
* ``model.json``, which declares how to feed it and how to read it::

    {
      "format": "torchscript" | "export",
      "name": "acme-lung", "version": "2.1.0",
      "weights": "model.pt",                    # optional: default, the one .pt/.pt2/.ts file beside it
      "input": {
        "spacing_mm": [z, y, x],                # optional: resample to this grid first (trilinear)
        "hu_window": [lo, hi],                  # clip HU to this range
        "normalize": "minmax" | "zscore" | "none",
        "mean": m, "std": s,                    # zscore only; default: the clipped volume's own
        "patch": [pz, py, px],                  # optional: sliding window of this size, else whole volume
        "overlap": 0.5,                         # sliding window overlap in [0, 0.9]
        "batch": 1                              # windows per forward call
      },
      "output": {
        "kind": "logits" | "probabilities",     # over the channel axis
        "classes": {"0": "background", "1": "lung", "2": "ggo", "3": "consolidation"}
      },
      "amp": true                               # optional: float16 autocast on CUDA (default true)
    }

The network sees one tensor ``(N, 1, z, y, x)`` float32 in the canonical
orientation of a supine axial series as DICOM stores it (``z`` foot to head,
``y`` anterior to posterior, ``x`` patient right to left), whatever the input
volume's orientation, and must return ``(N, C, z, y, x)`` scores for the ``C``
declared classes. Class names map to the ctfleet labels (0 background, 1 lung,
2 ground-glass opacity, 3 consolidation); ``lung`` is required.

Scores are turned into probabilities, stitched (Gaussian-weighted sliding
window), resampled back to the input grid (trilinear, slab by slab so memory
stays bounded), and the arg-max label map goes through the same measurement,
scoring, triage and overlays as the built-in analyzer
(:func:`model.analysis.analysis_of_canonical_labels`).

Modules: :mod:`.config` (``model.json``: :class:`~.config.ModelConfig`,
:func:`~.config.parse_config`, :func:`~.config.locate`), :mod:`.loader`
(:func:`~.loader.load`, the version digest), :mod:`.inference`
(:class:`~.inference.ScriptedAnalyzer`, the sliding window). They may import
numpy, torch, the standard library and the rest of :mod:`model`; this
``__init__`` imports nothing.
"""
