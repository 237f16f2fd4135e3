"""A trained model's predictions and their metrics (rules/evaluate.smk and the metrics rule).

``inference`` runs a kept model over images; ``evaluate`` makes a fold's test and validation
predictions and its Grad-CAM figure (``gradcam``); ``predict`` classifies a folder of new images;
``metrics`` computes one fold's image- and patient-level metrics with bootstrap intervals.
"""
