"""The experiment configs, one file per method, each with ``get_config(preset)``.

``python -m kdjax.main --config experiments/slkd.py:digits`` in a checkout (``experiments``
links here), or ``kdjax --config slkd:digits`` anywhere once kdjax is installed: a bare name
is looked up in this package.
"""
