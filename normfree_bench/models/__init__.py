"""The models a baseline is applied to: the one Transformer, timm models through `convert`, the factory
that builds either (`build_model`), and the contract every baseline must meet on them.

Usage: ``from normfree_bench.models.factory import build_model``
"""
