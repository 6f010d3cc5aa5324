"""The MetaGen domain: cameras, detection data, scenes and metrics. No inference here.

:mod:`~metagen_ppl.domain.camera` (the data's angle-linear camera; any angle-linear or pinhole camera),
:mod:`~metagen_ppl.domain.metagen_data` (MetaGen detection files: the ``metagen-detections`` schema and the
legacy list),
:mod:`~metagen_ppl.domain.coco` (COCO detection results plus camera poses -> a detection file),
:mod:`~metagen_ppl.domain.scenes` (the multi-scene 3D format),
:mod:`~metagen_ppl.domain.metrics` (frame Jaccard, box similarity, detector baselines),
:mod:`~metagen_ppl.domain.objects` (object matching against the truth).
"""
