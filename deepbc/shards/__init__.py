"""The TFRecord store each dataset is encoded into once, and the per-fold indexes over it
(rules/data.smk: fit_stain, encode_dataset, write_shards; docs/shards.md).

``records`` is the stored format both sides share (features, encodings, encode and decode, the
store's index); ``writer`` encodes a store and writes split indexes; ``reader`` reads a split into a
tf.data stream; ``stain`` normalizes stain before encoding.
"""
