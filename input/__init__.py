"""Adience ingestion, TFRecord shards and the tf.data pipeline."""
