"""Fine-tuning TF-Slim networks (rules/train.smk: get_checkpoint, train; and export_model).

``nets`` is the network registry; ``settings`` the typed training settings built from the schema;
``preprocessing`` TF-Slim's preprocessing and the augmentations; ``precision`` what a graph computes
in; ``graph`` the training graph; ``train`` the resumable two-stage training loop;
``checkpoints`` the ImageNet checkpoints; ``model_dir`` a trained model's folder; ``export`` the
SavedModel; ``compat`` the tf-slim fix every import of tf_slim needs first.
"""
