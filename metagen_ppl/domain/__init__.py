"""The MetaGen domain: cameras, detection data, scenes and metrics. No inference here.

:mod:`~metagen_ppl.domain.camera` (the data's angle-linear camera),
:mod:`~metagen_ppl.domain.metagen_data` (MetaGen detection files),
:mod:`~metagen_ppl.domain.scenes` (the multi-scene 3D format),
:mod:`~metagen_ppl.domain.metrics` (frame Jaccard, box similarity, detector baselines),
:mod:`~metagen_ppl.domain.objects` (object matching against the truth).
"""
