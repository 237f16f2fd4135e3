"""What the Snakefile asks of the package (rules/common.smk): config checks beyond the schema and
what a config says per job (``config``), the runs, results layout and target lists of a config
(``plan``), and config/README.md generated from the schema (``config_docs``).

Importing this package imports nothing: the Snakefile loads only the modules it needs.
"""
