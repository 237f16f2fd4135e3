"""A fold's evaluation job (rule evaluate): test and validation predictions and the Grad-CAM figure."""

from deepbc.evaluation.inference import predict_shards


def evaluate_fold(model_dir, test_index, test_out, val_index, val_out, gradcam_png, class_names: list[str],
                  seed: int, title: str, batch_size: int = 64, threads: int = 0, split_audits=()):
    """A fold's evaluation job: test predictions, validation predictions (what temperature scaling
    is fitted on) and the Grad-CAM figure of a seeded sample of the test predictions.

    One job, not three: each process loading TensorFlow and the model costs seconds, as much as
    the demo's predictions and maps themselves. ``split_audits``: the run's split audit, for the
    Grad-CAM figure's title."""
    from deepbc.evaluation import gradcam
    from deepbc.shards import reader as shard_reader

    with shard_reader.naming_corrupt_shards([test_index]):
        predict_shards(model_dir, test_index, test_out, batch_size, threads)
    with shard_reader.naming_corrupt_shards([val_index]):
        predict_shards(model_dir, val_index, val_out, batch_size, threads)
    with shard_reader.naming_corrupt_shards([test_index]):
        gradcam.plot_gradcam(model_dir, test_index, test_out, class_names, seed, title, gradcam_png, threads,
                             split_audits=split_audits)

