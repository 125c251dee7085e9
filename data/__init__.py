"""The data layer shared by annotate, train and eval.

- `data.store`: the DuckDB store (images, rankings, users, migrations, votes).
- `data.pickapic`: Pick-a-Pic parquet import and export.
- `data.images`: what an image must be to be stored (JPEG, bounded size, decodable).
- `data.pairs`: the training view, a torch Dataset of (caption, preferred, rejected).
- `data.stats`: what the store holds.

This package never imports the apps (annotate, train, eval).
"""
