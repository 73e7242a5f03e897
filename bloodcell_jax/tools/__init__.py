"""Tools: commands that work on data files or on several runs, not on one run (those are main.py's
modes). Each is `python -m bloodcell_jax.tools.<name>` with absl flags."""
