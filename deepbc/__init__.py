"""DeepBreastCancer: the importable logic behind the Snakemake workflow.

Rules call thin scripts in ``workflow_scripts/``; the scripts parse arguments and call this package.
"""

__version__ = "0.1.0"
