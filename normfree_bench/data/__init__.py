"""The data a run trains on: the byte-level text corpus (LM) and the images (ViT), with seeded batches.

Usage: ``from normfree_bench.data.task import load_data, loaders``
"""
