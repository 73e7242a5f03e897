"""Tools: commands that work on data files, weights or several runs, not on one run (those are main.py's
modes). Each is `python -m bloodcell_jax.tools.<name>` with absl flags on its own FlagValues; the parsing,
--help and one-line errors they share are in bloodcell_jax/cli.py."""
