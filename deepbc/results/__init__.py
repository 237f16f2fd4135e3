"""Result tables and figures from the metrics and predictions (rules/results.smk).

``tables`` (per task, summary, leakage), ``magnification``, ``calibration`` (table and reliability
diagrams) and ``figures`` (ROC, confusion matrices, training curves); ``preprint.yaml`` holds the
preprint's own figures, shown beside ours.
"""
