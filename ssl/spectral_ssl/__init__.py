"""spectral-ssl: joint-embedding self-supervised learning built around spectral transformations.

The import package lives in ``ssl/spectral_ssl`` (``ssl/`` is the source root, never a package,
so Python's standard ``ssl`` module is not shadowed).
"""

__version__ = "0.1.0"
