"""DeepBreastCancer: the importable logic behind the Snakemake workflow.

Rules call thin scripts in ``workflow_scripts/``; the scripts parse arguments and call this package.
"""

import os

__version__ = "0.1.0"

# TF-Slim builds its layers with tf-keras (Keras 2). Told so before TensorFlow is imported,
# TensorFlow loads tf-keras' optimizers at import instead of Keras 3's, which this package never
# uses: about 1 s less CPU in every process that imports TensorFlow. A value the user set is kept.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
